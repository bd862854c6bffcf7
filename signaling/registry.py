"""The call table: every live call of this edge, by id and by client.

The registry is the single answer to "what does this process hold": a call enters it before
its peer connection does any work and leaves it only when its teardown has released
everything (the call's `on_closed` callback), so shutdown can close whatever is in here and
tests can assert that nothing is left.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

from infra import metrics
from infra.logging import get_logger
from infra.memory import Reclaimer
from signaling.call import Call

log = get_logger(__name__)


class CallRegistry:
    def __init__(self) -> None:
        self._calls: dict[str, Call] = {}
        self._per_client: Counter[str] = Counter()
        self.anonymous_count = 0  # calls of anonymous pages (their share of slots is capped)
        self.accepting = True  # False once shutdown began: new calls get 503
        # an ended call is cyclic garbage: collect it and give its pages back soon after it leaves
        self.reclaimer = Reclaimer()

    def add(self, call: Call) -> None:
        if call.id in self._calls:
            raise ValueError(f"call {call.id!r} is already registered")
        self._calls[call.id] = call
        self._per_client[call.principal.client_id] += 1
        self.anonymous_count += call.principal.anonymous
        metrics.CALLS_ACTIVE.set(len(self._calls))

    def remove(self, call: Call) -> None:
        """The call's `on_closed`: it has released everything it held."""
        if self._calls.get(call.id) is not call:
            return
        del self._calls[call.id]
        client = call.principal.client_id
        self.anonymous_count -= call.principal.anonymous
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]
        metrics.CALLS_ACTIVE.set(len(self._calls))
        if self.accepting:  # at shutdown the process is about to exit: nothing to give back
            self.reclaimer.schedule()

    def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    def count_for(self, client_id: str) -> int:
        return self._per_client.get(client_id, 0)

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[Call]:
        return iter(list(self._calls.values()))

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    async def close_all(self, reason: str) -> None:
        """Stop accepting and close every call (shutdown); one failing teardown doesn't stop the rest."""
        self.accepting = False
        self.reclaimer.close()
        calls = list(self._calls.values())
        if not calls:
            return
        log.info("calls.closing_all", count=len(calls), reason=reason)
        results = await asyncio.gather(*(c.close(reason) for c in calls), return_exceptions=True)
        for call, r in zip(calls, results, strict=True):
            if isinstance(r, BaseException):
                log.error("call.close_failed", call_id=call.id, error=repr(r))
