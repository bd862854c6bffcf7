"""Process settings: embedded defaults, overridden by `MICROTURN_*` environment variables.

pydantic-settings sits at this external boundary only; inside, code passes plain values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "tiny"


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
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = False
    redis_url: str | None = None
