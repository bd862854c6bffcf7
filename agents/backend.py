"""What a background-model backend is, and how the agent picks one (DESIGN.md §7).

A backend turns one task — the conversation window as chat messages — into a stream of
answer text. Two ship: "tools", the embedded default (exact arithmetic, dates and time zones,
timers, unit conversion, per-call notes; agents/backends/tools.py), and "openai", any
OpenAI-compatible streaming chat server with the same tools exposed as functions
(agents/backends/openai.py). Timers outlive the task that set them: when one goes off the
backend calls `fire(session_id, text)`, and `session_ended` cancels everything a call left.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from infra.messages import ChatMessage

# (session_id, text): a timer or reminder going off, to be delivered into that call.
FireCallback = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True)
class TaskContext:
    task_id: str
    session_id: str
    messages: tuple[ChatMessage, ...]  # oldest first; the last "user" message is the ask
    created_at: float  # unix seconds
    timezone: str | None = None  # IANA name from the page, if known

    def last_user_text(self) -> str:
        for m in reversed(self.messages):
            if m.role == "user":
                return m.content
        return ""


class BackendError(RuntimeError):
    """A clean, reportable failure: the message is safe to show to the user as is."""


class Backend(Protocol):
    name: str

    def run(self, ctx: TaskContext) -> AsyncIterator[str]:
        """Stream the answer to `ctx` as text deltas; raises BackendError on a clean failure.

        An async generator: the caller cancels it (or stops iterating and `aclose()`s it) to
        cancel the task."""
        ...

    async def session_ended(self, session_id: str) -> None:
        """Forget the call's notes and cancel its timers: nothing fires after this."""
        ...

    async def aclose(self) -> None: ...


BACKENDS = ("tools", "openai")


def make_backend(settings: object, fire: FireCallback, *, name: str | None = None) -> Backend:
    """Build backend `name` with its own toolbox (timers, notes).

    `settings` is `infra.settings.Settings` or anything with a `backend` / `agent_backend`
    field (e.g. `agents.settings.AgentSettings`); the backend fields it lacks
    (`agent_openai_*`, `agent_max_*`) come from `infra.settings.Settings()`, i.e. the
    MICROTURN_AGENT_* environment. `name` overrides the settings' choice.
    """
    # Imported here: each backend module pulls in its own dependencies (aiohttp for openai).
    from agents.backends.openai import OpenAIBackend, OpenAIConfig
    from agents.backends.tools import ToolsBackend
    from agents.tools.toolbox import Toolbox, ToolLimits
    from infra.settings import Settings

    name = name or getattr(settings, "agent_backend", None) or getattr(settings, "backend", None) or "tools"
    from_env: dict[str, Any] = {}  # Settings() reads MICROTURN_* itself
    cfg = settings if isinstance(settings, Settings) else Settings(**from_env)
    toolbox = Toolbox(
        fire,
        ToolLimits(
            max_timers_per_session=cfg.agent_max_timers_per_session,
            max_notes_per_session=cfg.agent_max_notes_per_session,
        ),
    )
    if name == "tools":
        return ToolsBackend(toolbox)
    if name == "openai":
        key = cfg.agent_openai_api_key
        config = OpenAIConfig(
            base_url=cfg.agent_openai_base_url,
            model=cfg.agent_openai_model,
            api_key=key.get_secret_value() if key is not None else None,
            timeout_s=cfg.agent_openai_timeout_s,
            max_tool_rounds=cfg.agent_openai_max_tool_rounds,
        )
        return OpenAIBackend(config, toolbox)
    raise ValueError(f"unknown agent backend {name!r}; expected one of {BACKENDS}")
