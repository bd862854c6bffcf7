"""Which remote ICE candidates a call accepts, and how many.

Every remote candidate costs the server, and the caller chooses them all, in the offer and in
trickle PATCHes: aioice pairs each one with every local candidate and scans its lists linearly
on every addition (hundreds of candidates block the event loop for seconds, and every call's
audio with it), it sends STUN checks to each address, and an mDNS (`.local`) name holds the
request for up to a second while it is resolved. So a call accepts:

- at most `max_ice_candidates` distinct candidates in all; a PATCH that would go past it is
  refused whole (nothing of it applied), an offer keeps its first ones;
- no candidate at a loopback, link-local, unspecified, multicast, broadcast or reserved
  address, nor a hostname other than an mDNS name, unless `allow_loopback_candidates`: the
  server would send STUN to its own local ports;
- at most MAX_MDNS_PER_CALL distinct `.local` names, and at most MAX_MDNS_LOOKUPS of them
  being resolved at once in the whole process (aioice shares one mDNS socket per process).
  Names over either limit are dropped: the peer still receives our candidates and checks
  them, so ICE learns its address as peer-reflexive;
- PATCHES_PER_MIN trickle PATCHes a minute (bursts up to as many).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aioice.mdns import is_mdns_hostname
from aiortc import RTCIceCandidate, RTCPeerConnection
from aiortc.sdp import candidate_from_sdp

from infra.logging import get_logger
from signaling.auth import RateLimiter

log = get_logger(__name__)

MAX_MDNS_PER_CALL = 4  # a browser publishes one name per local address: 1-3 in practice
MAX_MDNS_LOOKUPS = 16  # per process, in flight
PATCHES_PER_MIN = 60  # a trickling client sends one PATCH per candidate or per batch

_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_BROADCAST = ipaddress.ip_address("255.255.255.255")


class TooManyCandidatesError(ValueError):
    """The PATCH would take the call over its candidate limit (-> 422)."""


def refused_address(host: str, port: int) -> str | None:
    """Why a candidate address is refused under the default policy ("loopback", ...); None if it is fine."""
    if is_mdns_hostname(host):
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return "hostname"  # resolving arbitrary names would be a DNS lookup per candidate
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not 0 < port < 65536:
        return "port"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_unspecified or ip in _THIS_NETWORK:
        return "unspecified"
    if ip.is_multicast or ip == _BROADCAST:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    return None


class MdnsLookups:
    """mDNS names being resolved right now, process-wide; `take` never waits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def take(self, n: int) -> int:
        granted = max(0, min(n, self.limit - self.in_flight))
        self.in_flight += granted
        return granted

    def give(self, n: int) -> None:
        self.in_flight = max(0, self.in_flight - n)


MDNS_LOOKUPS = MdnsLookups(MAX_MDNS_LOOKUPS)


def _key(c: RTCIceCandidate) -> tuple[str, int, str, int]:
    return (c.ip.lower(), c.port, c.protocol.lower(), c.component)


class CandidateGate:
    """One call's remote candidates: address policy, counts, mDNS budget, PATCH rate."""

    def __init__(self, max_candidates: int, allow_loopback: bool, *, lookups: MdnsLookups = MDNS_LOOKUPS) -> None:
        self.max_candidates = max_candidates
        self.allow_loopback = allow_loopback
        self.lookups = lookups
        self.refused: Counter[str] = Counter()  # reason -> candidates refused
        self._seen: set[tuple[str, int, str, int]] = set()
        self._mdns_names: set[str] = set()
        self._patches = RateLimiter(PATCHES_PER_MIN, max_clients=1)

    @property
    def accepted(self) -> int:
        return len(self._seen)

    def allow_patch(self) -> bool:
        return self._patches.allow("patch")

    def patch_retry_after(self) -> int:
        return self._patches.retry_after("patch")

    def _screen(self, candidates: list[RTCIceCandidate]) -> list[RTCIceCandidate]:
        """New candidates whose address the policy allows (duplicates and refused ones removed)."""
        fresh: list[RTCIceCandidate] = []
        keys: set[tuple[str, int, str, int]] = set()
        for c in candidates:
            reason = refused_address(c.ip, c.port)
            if reason is not None and not (self.allow_loopback and reason not in ("hostname", "port")):
                self.refused[reason] += 1
                continue
            k = _key(c)
            if k not in self._seen and k not in keys:
                keys.add(k)
                fresh.append(c)
        return fresh

    def _mdns_budget(self, candidates: list[RTCIceCandidate]) -> tuple[list[RTCIceCandidate], int]:
        """Drop `.local` candidates over the per-call name limit or the process's lookup slots
        (one per candidate: each is a lookup); returns (kept, slots taken)."""
        names = set(self._mdns_names)
        wanted: list[RTCIceCandidate] = []
        for c in candidates:
            name = c.ip.lower()
            if is_mdns_hostname(name) and (name in names or len(names) < MAX_MDNS_PER_CALL):
                names.add(name)
                wanted.append(c)
        taken = self.lookups.take(len(wanted))
        granted = {id(c) for c in wanted[:taken]}
        kept = []
        for c in candidates:
            if not is_mdns_hostname(c.ip):
                kept.append(c)
            elif id(c) in granted:
                kept.append(c)
                self._mdns_names.add(c.ip.lower())
            else:
                self.refused["mdns_limit"] += 1
        return kept, taken

    # the offer -------------------------------------------------------------------------------
    @asynccontextmanager
    async def offer(self, sdp: str) -> AsyncIterator[str]:
        """The offer with refused and surplus `a=candidate` lines removed; mDNS lookup slots
        are held while the body runs (aiortc resolves the offer's names in setRemoteDescription)."""
        before = self.refused.total()
        lines: list[str | None] = list(sdp.split("\n"))
        parsed: list[tuple[int, RTCIceCandidate]] = []
        for i, raw in enumerate(sdp.split("\n")):
            if raw.startswith("a=candidate:"):
                try:
                    parsed.append((i, candidate_from_sdp(raw[len("a=candidate:") :].strip())))
                except Exception:  # aiortc's parser asserts and indexes: drop what it would choke on
                    self.refused["malformed"] += 1
                    lines[i] = None
        # first ones first (browsers list host candidates first); the same candidate repeated
        # under each bundled m-line counts once
        fresh = self._screen([c for _, c in parsed])
        room = max(0, self.max_candidates - len(self._seen))
        if len(fresh) > room:
            self.refused["over_limit"] += len(fresh) - room
            fresh = fresh[:room]
        kept, taken = self._mdns_budget(fresh)
        kept_keys = {_key(c) for c in kept}
        for i, c in parsed:
            if _key(c) not in kept_keys:
                lines[i] = None
        self._seen.update(kept_keys)
        self._log_refused("offer", before)
        try:
            yield "\n".join(line for line in lines if line is not None)
        finally:
            self.lookups.give(taken)

    # trickle ICE -----------------------------------------------------------------------------
    async def add(self, pc: RTCPeerConnection, candidates: list[RTCIceCandidate]) -> int:
        """Add a PATCH's candidates to `pc`; returns how many were added.

        Raises TooManyCandidatesError (nothing added) when they would exceed the call's limit.
        """
        before = self.refused.total()
        fresh = self._screen(candidates)
        if len(self._seen) + len(fresh) > self.max_candidates:
            self.refused["over_limit"] += len(fresh)
            self._log_refused("patch", before)
            raise TooManyCandidatesError(
                f"this call already has {len(self._seen)} remote ICE candidates and the limit is"
                f" {self.max_candidates}; send fewer (host and server-reflexive ones are enough)"
            )
        kept, taken = self._mdns_budget(fresh)
        self._seen.update(_key(c) for c in kept)
        self._log_refused("patch", before)
        try:
            for c in kept:
                if not is_mdns_hostname(c.ip):
                    await pc.addIceCandidate(c)
            # names resolve concurrently: a PATCH waits for one lookup timeout at most
            await asyncio.gather(*(pc.addIceCandidate(c) for c in kept if is_mdns_hostname(c.ip)))
        finally:
            self.lookups.give(taken)
        return len(kept)

    def _log_refused(self, where: str, before: int) -> None:
        if self.refused.total() > before:
            log.info("ice.candidates_refused", where=where, refused=dict(self.refused))
