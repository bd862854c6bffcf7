"""Process settings: embedded defaults, overridden by `MICROTURN_*` environment variables.

pydantic-settings sits at this external boundary only; inside, code passes plain values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "tiny"
DEFAULT_WEB_DIR = Path(__file__).resolve().parent.parent / "web"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MICROTURN_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    preset: str = "tiny"
    # A trained checkpoint directory; when absent the preset runs with random weights.
    checkpoint: Path | None = DEFAULT_CHECKPOINT
    device: str = "cpu"
    max_sessions: int = Field(8, ge=1)
    deterministic: bool = False
    # `microturn serve` runs the engine in a child process (model/engine_process.py): one
    # interpreter each for the event loop and the model, so neither waits on the other's GIL.
    # Off: the engine in a thread of the serving process (embedders, a debugger).
    engine_process: bool = True
    # The engine process's scheduling priority against the serving process's, in nice steps
    # (model/engine_process.py): -10 runs the step ahead of the edge where they share a core;
    # 0 leaves it equal. Raising it needs CAP_SYS_NICE; without, a warning says so at startup.
    engine_nice: int = Field(-10, ge=-20, le=20)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = False
    # Background tasks and results go over Redis (agents run as `microturn agent --redis URL`);
    # unset = `microturn serve` runs the tools agent in-process on its memory bus.
    redis_url: str | None = None
    # With redis_url: also run one agent inside `microturn serve` (a one-box Redis setup).
    agent_in_process: bool = False

    # --- edge (signaling/) -------------------------------------------------------------------
    # The call page (web/): index.html at `/`, everything else under /static/.
    web_dir: Path = DEFAULT_WEB_DIR
    # Anonymous pages may mint session tokens (POST /v1/sessions); off = an API key is required.
    allow_anonymous: bool = True
    # Server-to-server API keys, comma-separated in the environment (MICROTURN_API_KEYS=k1,k2).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # HMAC key for session tokens; unset = a random key per process (tokens die with a restart).
    token_secret: SecretStr | None = None
    token_ttl_s: int = Field(300, ge=10)
    # Largest SDP offer body (a browser offer with audio, video and data is 4-8 KB).
    max_sdp_bytes: int = Field(32_768, ge=1024)
    # Largest client data-channel event (UTF-8 bytes); bigger ones get an error event.
    max_event_bytes: int = Field(4096, ge=64)
    # Anonymous/token clients: concurrent calls and session/call creations per minute each.
    max_calls_per_client: int = Field(4, ge=1)
    rate_limit_per_min: int = Field(30, ge=1)
    # A call whose media never connects is torn down after connect_timeout_s; one that sends
    # no media and no data-channel message for idle_timeout_s (a client that vanished) too.
    connect_timeout_s: float = Field(20.0, gt=0)
    idle_timeout_s: float = Field(30.0, gt=0)
    max_call_s: float = Field(4 * 3600.0, gt=0)
    # STUN/TURN URLs for the server's ICE agent, comma-separated; empty = host candidates only
    # (aiortc would otherwise ask stun.l.google.com on every call).
    ice_servers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    ice_username: str | None = None
    ice_credential: SecretStr | None = None
    # Camera frames the model sees per second (<= one per 200 ms micro-turn).
    video_fps: float = Field(5.0, gt=0, le=5)  # one frame per micro-turn, as the model is trained
    # Playout jitter hold a call starts with, and its cap (media/output_track.py): silence played
    # before the model's audio (re)starts, grown by 20 ms per underrun; 0 = none until one occurs.
    playout_hold_ms: int = Field(0, ge=0, le=1000)
    playout_max_hold_ms: int = Field(100, ge=0, le=1000)
    # Quiet steering (media/output_track.py): model audio a call's playout keeps queued ahead of
    # each arriving turn, on top of the hold, by adding or skipping frames where the model is
    # silent; off: whatever queue the call's first turns left stays for the whole call.
    playout_steer: bool = True
    playout_margin_ms: int = Field(40, ge=0, le=1000)
    # Each call's input turns end on the wall clock's 200 ms grid (media/assembler.py), so a
    # worker's calls are ready together and share one step per turn; off: at the call's phase.
    align_turns: bool = True
    # Largest data-channel message the SDP answer advertises (a=max-message-size); a peer that
    # ignores it is hung up once twice this much waits in SCTP reassembly.
    max_channel_message_bytes: int = Field(65_536, ge=1024)
    # /readyz answers 503 when the engine completed no step for this long while calls wait on it.
    engine_stall_s: float = Field(10.0, gt=0)

    # --- background-model backends (agents/backend.py) -------------------------------------
    # "tools": the embedded tools agent; "openai": any OpenAI-compatible /v1/chat/completions.
    agent_backend: Literal["tools", "openai"] = "tools"
    agent_openai_base_url: str = "http://127.0.0.1:8000/v1"
    agent_openai_model: str = "default"
    agent_openai_api_key: SecretStr | None = None
    # Connect timeout and longest silence inside a stream (the worker bounds the whole task).
    agent_openai_timeout_s: float = Field(60.0, gt=0)
    agent_openai_max_tool_rounds: int = Field(4, ge=1, le=16)
    agent_max_timers_per_session: int = Field(8, ge=1)
    agent_max_notes_per_session: int = Field(32, ge=1)

    # --- edge hardening (signaling/ice.py, auth.py, exposure.py; issue 8) ---------------------
    # Remote ICE candidates one call may add (offer + trickle PATCHes); a browser sends ~2-12.
    max_ice_candidates: int = Field(32, ge=1, le=1000)
    # Accept remote ICE candidates at loopback, link-local, unspecified, multicast or reserved
    # addresses. Off by default: such a candidate makes the server send STUN to its own local
    # ports. A browser on the same machine offers its real interfaces (or .local names), so
    # `make run` works without it; peers talking over 127.0.0.1 (some tests) need it on.
    allow_loopback_candidates: bool = False
    # Share of the engine slots anonymous pages may hold together (at least one slot when > 0);
    # the rest stays free for API-key integrators and the tokens they mint.
    anonymous_slot_share: float = Field(0.5, ge=0.0, le=1.0)
    # Reverse proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For names the client;
    # the header is ignored from any other peer. Empty = the TCP peer is the client.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Origins (scheme://host[:port], comma-separated) besides the server's own whose pages may
    # mint anonymous session tokens; "*" allows any.
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Bearer key /metrics and /readyz require (Prometheus `authorization`, probe httpHeaders);
    # unset = open, as on a laptop.
    ops_key: SecretStr | None = None

    @model_validator(mode="after")
    def _hold_within_its_cap(self) -> Settings:
        if self.playout_hold_ms > self.playout_max_hold_ms:
            raise ValueError(
                f"playout_hold_ms ({self.playout_hold_ms}) must not exceed playout_max_hold_ms "
                f"({self.playout_max_hold_ms})"
            )
        return self

    @field_validator("api_keys", "ice_servers", "trusted_proxies", "allowed_origins", mode="before")
    @classmethod
    def _split_commas(cls, v: object) -> object:
        if isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
        return v


class SettingsError(ValueError):
    """Invalid settings from the environment or the command line; the message says which."""


def settings_from(**flags: object) -> Settings:
    """The environment's settings with the command-line flags given (None = not given) on top;
    a readable SettingsError instead of pydantic's exception at the process boundary."""
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as e:
        raise SettingsError(f"invalid settings:\n{e}") from None
