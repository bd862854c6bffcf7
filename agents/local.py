"""The tools agent in-process, for `microturn serve`: nothing to configure.

`start_local_agent(bus)` runs one AgentWorker on the given (memory) bus and an in-memory
task queue, and returns the handle whose `client` the edge submits to. The same code path as
the Redis deployment, minus the network.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.client import BackgroundClient
from agents.settings import AgentSettings
from agents.worker import AgentWorker, BackendFactory
from infra.bus import Bus
from infra.taskqueue import MemoryTaskQueue, TaskQueue


@dataclass
class LocalAgent:
    worker: AgentWorker
    client: BackgroundClient
    queue: TaskQueue

    async def aclose(self, drain_s: float = 2.0) -> None:
        """Stop after the edge's calls are closed: running tasks get `drain_s`."""
        await self.client.aclose()
        await self.worker.stop(drain_s=drain_s)
        await self.queue.close()


async def start_local_agent(
    bus: Bus,
    queue: TaskQueue | None = None,
    *,
    backend_settings: object | None = None,
    backend: BackendFactory | None = None,
    settings: AgentSettings | None = None,
) -> LocalAgent:
    """`backend_settings`: the fields make_backend reads (infra.settings.Settings; default:
    from the environment). `backend` replaces the backend factory outright (tests)."""
    from agents.cli import backend_factory

    if backend is None:
        if backend_settings is None:
            from infra.settings import Settings

            backend_settings = Settings(**{})
        backend = backend_factory(getattr(backend_settings, "agent_backend", "tools"), backend_settings)
    queue = queue or MemoryTaskQueue()
    settings = settings or AgentSettings(consumer="local")
    worker = AgentWorker(queue, bus, backend, settings)
    await worker.start()
    return LocalAgent(worker, BackgroundClient(bus, queue), queue)
