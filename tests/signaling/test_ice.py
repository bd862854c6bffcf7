"""signaling/ice.py without a network: the address policy, the counts and the mDNS budget.
What an aioice agent ends up holding is tested through the API in test_routes.py."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCIceCandidate

from signaling.ice import MAX_MDNS_PER_CALL, CandidateGate, MdnsLookups, TooManyCandidatesError, refused_address


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("192.0.2.10", None),
        ("10.1.2.3", None),  # LAN clients are normal callers
        ("2001:db8::1", None),
        ("abcdef01-2345-6789-abcd-ef0123456789.local", None),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.10.1", "link_local"),
        ("fe80::1", "link_local"),
        ("fe80::1%eth0", "link_local"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("ff02::fb", "multicast"),
        ("255.255.255.255", "multicast"),
        ("240.0.0.1", "reserved"),
        ("example.com", "hostname"),
        ("localhost", "hostname"),
    ],
)
def test_address_policy(host: str, reason: str | None) -> None:
    assert refused_address(host, 4000) == reason


def test_port_zero_is_refused() -> None:
    assert refused_address("192.0.2.10", 0) == "port"


class FakePc:
    """Counts addIceCandidate calls; mDNS ones wait until released (a lookup in flight)."""

    def __init__(self) -> None:
        self.added: list[str] = []
        self.release = asyncio.Event()

    async def addIceCandidate(self, c: RTCIceCandidate | None) -> None:  # aiortc's name
        assert c is not None
        self.added.append(c.ip)
        if c.ip.endswith(".local"):
            await self.release.wait()


def candidate(host: str, port: int = 5000) -> RTCIceCandidate:
    return RTCIceCandidate(
        component=1, foundation="1", ip=host, port=port, priority=1, protocol="udp", type="host", sdpMid="0"
    )


async def test_limits_count_distinct_candidates_and_refuse_whole_patches() -> None:
    gate = CandidateGate(3, allow_loopback=False)
    pc = FakePc()
    added = await gate.add(pc, [candidate("192.0.2.1"), candidate("192.0.2.1"), candidate("127.0.0.1")])  # type: ignore[arg-type]
    assert added == 1 and gate.accepted == 1 and gate.refused["loopback"] == 1
    await gate.add(pc, [candidate("192.0.2.1")])  # type: ignore[arg-type]  # a repeat costs nothing
    assert gate.accepted == 1
    with pytest.raises(TooManyCandidatesError):
        await gate.add(pc, [candidate(f"192.0.2.{i}") for i in range(2, 5)])  # type: ignore[arg-type]
    assert gate.accepted == 1 and pc.added == ["192.0.2.1"]  # nothing of the refused PATCH
    await gate.add(pc, [candidate("192.0.2.2"), candidate("192.0.2.3")])  # type: ignore[arg-type]
    assert gate.accepted == 3


async def test_mdns_lookups_are_bounded_per_process() -> None:
    """Lookups in flight across all calls stay under the process limit; slots come back."""
    lookups = MdnsLookups(limit=3)
    pcs = [FakePc() for _ in range(3)]
    gates = [CandidateGate(32, allow_loopback=False, lookups=lookups) for _ in pcs]
    names = [f"{i:08x}-0000-0000-0000-000000000000.local" for i in range(MAX_MDNS_PER_CALL)]
    tasks = [asyncio.create_task(g.add(pc, [candidate(n) for n in names])) for g, pc in zip(gates, pcs, strict=True)]  # type: ignore[arg-type]
    for _ in range(20):  # let every add() run up to its lookups
        await asyncio.sleep(0)
    in_flight = sum(len(pc.added) for pc in pcs)
    assert in_flight == 3 == lookups.in_flight  # the first call took every slot, the others got none
    for pc in pcs:
        pc.release.set()
    await asyncio.gather(*tasks)
    assert lookups.in_flight == 0
    assert sum(g.refused["mdns_limit"] for g in gates) == 3 * MAX_MDNS_PER_CALL - 3


async def test_offer_keeps_its_first_candidates_and_drops_refused_ones() -> None:
    gate = CandidateGate(2, allow_loopback=False)
    sdp = (
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 9 192.0.2.1 5000 typ host\r\n"
        "a=candidate:2 1 udp 8 127.0.0.1 5000 typ host\r\n"
        "a=candidate:3 1 udp 7 192.0.2.3 5000 typ host\r\n"
        "a=candidate:4 1 udp 6 192.0.2.4 5000 typ host\r\n"
        "a=candidate:garbage\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n"
        "a=candidate:1 1 udp 9 192.0.2.1 5000 typ host\r\n"  # the same one under a bundled m-line
    )
    async with gate.offer(sdp) as screened:
        kept = [line for line in screened.split("\r\n") if line.startswith("a=candidate:")]
    assert kept == [
        "a=candidate:1 1 udp 9 192.0.2.1 5000 typ host",
        "a=candidate:3 1 udp 7 192.0.2.3 5000 typ host",
        "a=candidate:1 1 udp 9 192.0.2.1 5000 typ host",
    ]
    assert "m=video" in screened and gate.accepted == 2
    assert gate.refused == {"loopback": 1, "over_limit": 1, "malformed": 1}
