"""The benchmark's cheap caller (tests/e2e/aiortc_client.py): pre-encoded packets out, RTP
packets counted (not decoded) in. It must still be a real call: the server decodes the replayed
packets as the caller's speech and the model's audio arrives every 20 ms with no holes."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest

from tests.e2e.aiortc_client import CODEC_CLOCK, Caller, encode_packets, is_silence, read_wav, speech_wav
from tests.e2e.aiortc_server import edge_settings, running_edge

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return read_wav(speech_wav(tmp_path_factory.mktemp("wav") / "speech.wav", 2.0))


def test_encode_packets_is_one_payload_per_20_ms(speech: np.ndarray) -> None:
    for codec in ("opus", "pcmu"):
        packets = encode_packets(speech, codec)
        # Opus's resampler holds back a few ms, so at most one 20 ms frame short
        assert speech.size // 320 - 1 <= len(packets) <= speech.size // 320, codec
    assert {len(p) for p in encode_packets(speech, "pcmu")} == {160}  # one byte per 8 kHz sample


@pytest.mark.parametrize("codec", ["opus", "pcmu", "pcma"])
def test_digital_silence_is_told_from_quiet_sound(codec: str) -> None:
    """The server's output track sends zeros when it has nothing to play; even -60 dB noise
    must not look like that."""
    zeros = encode_packets(np.zeros(3200, np.float32), codec)
    quiet = encode_packets((1e-3 * np.random.default_rng(0).standard_normal(3200)).astype(np.float32), codec)
    assert all(is_silence(codec, p) for p in zeros[1:])  # the first Opus packet may carry codec warm-up
    assert not any(is_silence(codec, p) for p in quiet)


@pytest.mark.parametrize("codec", ["opus", "pcmu"])
async def test_encoded_caller_is_heard_and_counts_what_it_receives(
    http: aiohttp.ClientSession, speech: np.ndarray, codec: str
) -> None:
    async with running_edge(edge_settings()) as edge:
        caller = Caller(edge.url, http, speech, codec=codec, packets=encode_packets(speech, codec), decode=False)
        try:
            await caller.mint_token()
            assert (await caller.connect()).status == 201
            call = edge.rt.calls.get(caller.call_id or "")
            assert call is not None
            await asyncio.wait_for(caller.mic.finished.wait(), 10)
            await caller.wait_event(lambda e: e["type"] == "metrics.latency" and e["turn"] >= 5, timeout=5)

            # the server decoded the replayed packets: most of the 2 s of speech reached the model
            assert call.transport.assembler.samples_in >= 1.5 * 16000
            assert call.transport.turns_out >= 6
            rx = caller.received
            assert len(rx.arrivals) >= 60
            assert set(np.diff(rx.pts) % 2**32) == {CODEC_CLOCK[codec][1]}  # consecutive 20 ms packets
            assert rx.lost == 0
            assert len(rx.silent) == len(rx.arrivals)
            assert rx.rms == [] and rx.samples == []  # counted, never decoded
        finally:
            await caller.close()
