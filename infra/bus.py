"""The message bus between edge, worker and agents.

`Bus` is the interface; `MemoryBus` is the in-process implementation used by
`microturn serve` on one machine (a Redis Streams implementation comes with the agents
issue). Payloads are bytes (msgspec-encoded structs from infra/messages.py); topics come
from infra/keys.py.

Delivery: every subscriber of a topic gets every message published after it subscribed,
in publish order. Each subscription has a bounded queue; when a consumer falls so far behind
that its queue is full, the oldest message is dropped and counted (`Subscription.dropped`) —
memory stays bounded and the consumer sees the freshest data, which for 200 ms media is the
useful half.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterator

import msgspec

from infra.logging import get_logger

log = get_logger(__name__)

DEFAULT_QUEUE = 256
_CLOSED = object()


class BusClosed(RuntimeError):
    pass


class BusUnavailable(ConnectionError):
    """The bus's backing store (Redis) cannot be reached right now; a later try may work."""


class Subscription:
    """An async iterator over one topic; `close()` (or the bus closing) ends the iteration."""

    def __init__(self, bus: Bus, topic: str, maxsize: int) -> None:
        self.topic = topic
        self.dropped = 0
        self._bus = bus
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize)
        self._closed = False

    def _deliver(self, item: object) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("bus.subscriber_behind", topic=self.topic, dropped=self.dropped)
        self._queue.put_nowait(item)

    async def ready(self) -> None:
        """Return once messages published from now on are sure to reach this subscription
        (immediate in memory; a Redis subscription first learns where the stream stands)."""

    async def get(self, timeout: float | None = None) -> bytes:
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is _CLOSED:
            self._closed = True
            raise StopAsyncIteration
        assert isinstance(item, bytes)
        return item

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        return await self.get()

    def close(self) -> None:
        if not self._closed:
            self._bus._unsubscribe(self)
            self._closed = True
            self._deliver(_CLOSED)


class Bus(ABC):
    @abstractmethod
    async def publish(self, topic: str, data: bytes) -> None: ...

    @abstractmethod
    def subscribe(self, topic: str, maxsize: int = DEFAULT_QUEUE) -> Subscription: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def _unsubscribe(self, sub: Subscription) -> None: ...

    async def publish_struct(self, topic: str, msg: msgspec.Struct) -> None:
        await self.publish(topic, msgspec.msgpack.encode(msg))


class MemoryBus(Bus):
    def __init__(self) -> None:
        self._subs: dict[str, list[Subscription]] = defaultdict(list)
        self._closed = False

    async def publish(self, topic: str, data: bytes) -> None:
        if self._closed:
            raise BusClosed("bus is closed")
        for sub in self._subs.get(topic, ()):
            sub._deliver(data)

    def subscribe(self, topic: str, maxsize: int = DEFAULT_QUEUE) -> Subscription:
        if self._closed:
            raise BusClosed("bus is closed")
        sub = Subscription(self, topic, maxsize)
        self._subs[topic].append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic)
        if subs and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.topic]

    def subscribed_topics(self) -> dict[str, int]:
        """Topic -> live subscriptions: what leak checks look at after calls end."""
        return {topic: len(subs) for topic, subs in self._subs.items() if subs}

    async def close(self) -> None:
        self._closed = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close()
