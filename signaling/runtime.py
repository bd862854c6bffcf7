"""What one `microturn serve` process holds, as aiohttp app keys (shared by app.py and routes.py)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from agents.client import BackgroundClient
from infra.bus import MemoryBus
from infra.settings import Settings
from model.checkpoint import Checkpoint
from model.engine import Engine
from model.worker import Worker
from signaling.auth import Authenticator, RateLimiter
from signaling.registry import CallRegistry


@dataclass
class Runtime:
    checkpoint: Checkpoint
    engine: Engine
    bus: MemoryBus
    worker: Worker
    calls: CallRegistry
    auth: Authenticator
    limiter: RateLimiter  # per-client creations (sessions and calls) per minute
    background: BackgroundClient | None = None  # the background agents' queue (signaling/background.py)


RUNTIME = web.AppKey("runtime", Runtime)
SETTINGS = web.AppKey("settings", Settings)
BACKGROUND = web.AppKey("background", BackgroundClient)  # a client given to create_app (tests)
CHECKPOINT = web.AppKey("checkpoint", Checkpoint)  # preloaded model (optional)
