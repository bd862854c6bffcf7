"""How an agent process runs its tasks: concurrency, time limits, retries, reclaiming.

A plain dataclass inside; `from_env` reads `MICROTURN_REDIS_URL` and `MICROTURN_AGENT_*` at
the process boundary. Backend settings (which model, which server) are `infra.settings`'s
`agent_*` fields: they describe the backend, these describe the worker.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace


def default_consumer() -> str:
    """Unique per process and readable in XINFO CONSUMERS: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class AgentSettings:
    redis_url: str | None = None  # None: in process, on the memory bus and queue
    # "tools" | "openai" (agents/backend.py), or "package.module:factory" for a backend of
    # your own: factory(settings, fire) -> Backend
    backend: str = "tools"
    consumer: str = field(default_factory=default_consumer)
    concurrency: int = 4  # tasks run at once by this process
    task_timeout_s: float = 60.0  # one attempt, first delta to done
    max_attempts: int = 2  # per delivery, with backoff between; then dead letter + failed
    retry_backoff_s: float = 0.5  # doubles per attempt
    max_deliveries: int = 3  # a task handed out more often (agents dying on it) is dead-lettered
    reclaim_idle_s: float = 10.0  # a task untouched this long belongs to a dead agent
    reclaim_every_s: float = 1.0  # touch own tasks, reclaim others', trim
    trim_every_s: float = 30.0
    read_block_s: float = 1.0
    drain_s: float = 10.0  # on SIGTERM, in-flight tasks get this long; the rest go back to the queue
    give_up_s: float = 10.0  # how long a final failure / dead letter / ack is retried in an outage
    port: int = 0  # serve /healthz and /metrics on this port (MICROTURN_HOST); 0 = none

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.max_attempts < 1 or self.max_deliveries < 1:
            raise ValueError("max_attempts and max_deliveries must be >= 1")
        if min(self.task_timeout_s, self.reclaim_idle_s, self.reclaim_every_s, self.read_block_s) <= 0:
            raise ValueError("times must be > 0")

    @classmethod
    def from_dsn(cls, dsn: str, **overrides: object) -> AgentSettings:
        return replace(cls(redis_url=dsn), **overrides)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> AgentSettings:
        """MICROTURN_REDIS_URL and MICROTURN_AGENT_<FIELD> (e.g. MICROTURN_AGENT_CONCURRENCY=8);
        keyword overrides (command-line flags) win; None overrides are ignored."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if env.get("MICROTURN_REDIS_URL"):
            values["redis_url"] = env["MICROTURN_REDIS_URL"]
        for f in fields(cls):
            raw = env.get(f"MICROTURN_AGENT_{f.name.upper()}")
            if raw is None or f.name == "redis_url":
                continue
            conv = {"int": int, "float": float}.get(str(f.type), str)
            try:
                values[f.name] = conv(raw)
            except ValueError:
                raise ValueError(f"MICROTURN_AGENT_{f.name.upper()}={raw!r}: expected {f.type}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
