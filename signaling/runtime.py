"""What one edge process holds, as aiohttp app keys (shared by app.py, edge.py and routes.py).

The same `Runtime` serves `microturn serve` (in-process engine and worker behind
`LocalWorkers`, memory bus) and `microturn edge` (`RedisWorkers`, Redis bus): signaling
reaches the model only through `workers`. Model types are named for the type checker only,
so importing this module never loads torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from agents.client import BackgroundClient
from infra.bus import Bus
from infra.settings import Settings
from signaling.auth import Authenticator, RateLimiter
from signaling.registry import CallRegistry
from signaling.workers import WorkerPool

if TYPE_CHECKING:
    from model.checkpoint import Checkpoint
    from model.engine import Engine
    from model.engine_process import EngineProcess
    from model.worker import Worker


@dataclass
class Runtime:
    bus: Bus  # micro-turns in and out (memory in `serve`, Redis on an edge)
    workers: WorkerPool  # where each call's model session runs
    calls: CallRegistry
    auth: Authenticator
    limiter: RateLimiter  # per-client creations (sessions and calls) per minute
    model_name: str
    trained: bool
    model_source: str = ""  # where the weights came from (the status page)
    background: BackgroundClient | None = None  # the background agents' queue (signaling/background.py)
    # `serve` only: the engine (in its own process by default) and worker behind `workers`
    # (None on an edge)
    engine: Engine | EngineProcess | None = None
    worker: Worker | None = None


RUNTIME = web.AppKey("runtime", Runtime)
SETTINGS = web.AppKey("settings", Settings)
BACKGROUND = web.AppKey("background", BackgroundClient)  # a client given to create_app (tests)
CHECKPOINT: web.AppKey[Checkpoint] = web.AppKey("checkpoint")  # preloaded model (optional)
