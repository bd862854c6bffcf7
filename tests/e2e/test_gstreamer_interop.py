"""A gateway built on GStreamer's webrtcbin calls in (Debian's GStreamer 1.22, /usr/bin/python3).

webrtcbin signs DTLS with an RSA certificate and is the DTLS server (it offers actpass, we
answer active); before signaling/dtls.py widened aiortc's ECDSA-only cipher list, every such
call got its 201 and answer and then died with `no shared cipher`. Each case places a real
WHIP-style call (PCMU or Opus, API key, no data channel, like a SIP bridge) and checks audio
both ways with known signals: webrtcbin's 330 Hz tone reaches the worker's input turns, and a
440 Hz tone pushed into the call's output track (where the model's audio goes) reaches webrtcbin.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from infra import keys
from infra.bus import Subscription
from infra.messages import MicroTurnInput
from signaling import dtls
from tests.e2e.aiortc_client import read_wav
from tests.e2e.aiortc_server import ROOT, assert_released, edge_settings, running_edge, wait_until

SYSTEM_PYTHON = "/usr/bin/python3"
CLIENT = ROOT / "tests" / "e2e" / "gst_client.py"
TONE_HZ = 330.0  # gst_client.py's audiotestsrc
BACK_HZ, BACK_AMPLITUDE = 440.0, 0.5  # pushed into the call's output track (800 ms)
# aiortc's own list, i.e. the bug: what an unfixed edge offers as DTLS client
ECDSA_ONLY = b":".join(c for c in dtls.CIPHERS.split(b":") if b"-ECDSA-" in c)

pytestmark = pytest.mark.timeout(60)


@functools.cache
def gstreamer_missing() -> str | None:
    """Why Debian's python cannot drive webrtcbin, or None when it can."""
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); "
        "from gi.repository import Gst, GstWebRTC"
    )
    try:
        r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    except OSError as e:
        return f"{SYSTEM_PYTHON} not runnable ({e})"
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-1:] or ["?"]
        fix = "apt-get install python3-gi gir1.2-gst-plugins-bad-1.0"
        return f"{SYSTEM_PYTHON} cannot import gi with Gst + GstWebRTC ({tail[0]}): {fix}"
    return None


@pytest.fixture(autouse=True)
def _need_gstreamer() -> None:
    reason = gstreamer_missing()
    if reason is not None:
        pytest.skip(reason)


async def gst_call(
    url: str, token: str, codec: str, out: Path, *, seconds: float = 2.5, min_peak: float = 0.0
) -> dict[str, Any]:
    """Run gst_client.py to the end and return its JSON summary."""
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON,
        str(CLIENT),
        url,
        "--token",
        token,
        "--codec",
        codec,
        "--seconds",
        str(seconds),
        "--min-peak",
        str(min_peak),
        "--timeout",
        "12",
        "--out",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 40)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = stdout.decode().strip().splitlines()
    assert lines, f"gst_client.py printed nothing; stderr: {stderr.decode()[-2000:]}"
    return dict(json.loads(lines[-1]))


def tone_level(x: np.ndarray, hz: float, rate: int = 16_000) -> float:
    """Fraction of the signal's energy within 20 Hz of `hz`."""
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    f = np.fft.rfftfreq(x.size, 1 / rate)
    return float(spec[np.abs(f - hz) < 20].sum() / (spec.sum() + 1e-12))


async def drain(sub: Subscription) -> list[MicroTurnInput]:
    out: list[MicroTurnInput] = []
    while True:
        try:
            out.append(msgspec.msgpack.decode(await sub.get(timeout=0.01), type=MicroTurnInput))
        except TimeoutError:
            return out


@pytest.mark.parametrize("codec", ["pcmu", "opus"])
async def test_webrtcbin_gateway_call_carries_audio_both_ways(codec: str, tmp_path: Path) -> None:
    async with running_edge(edge_settings(api_keys=["gw-key"])) as edge:
        inputs = edge.rt.bus.subscribe(keys.inputs("local"), maxsize=1024)  # spy on what reaches the worker
        try:
            out = tmp_path / "rx.wav"
            client = asyncio.create_task(gst_call(edge.url, "gw-key", codec, out, min_peak=BACK_AMPLITUDE / 2))
            # once the call is up, put a known signal where the model's audio goes: the check of
            # the way back must not depend on how fast a random-weights model runs on this CPU
            call = None
            while call is None and not client.done():
                await asyncio.sleep(0.05)
                call = next((c for c in edge.rt.calls if c.state == "connected"), None)
            if call is not None:
                call.output.push(BACK_AMPLITUDE * np.sin(2 * np.pi * BACK_HZ * np.arange(12_800) / 16_000))
            summary = await client
            assert summary["status"] == 201 and summary["answer_codecs"] == [codec], summary
            # DTLS with webrtcbin's RSA certificate: the handshake that used to fail
            assert summary["dtls_state"] == "connected" and summary["connected"], summary
            assert summary["error"] is None and summary["delete_status"] == 204, summary

            # gateway -> server: the tone, decoded and resampled, is in the worker's input turns
            turns = [t for t in await drain(inputs) if t.session_id == summary["call_id"]]
            assert len(turns) >= 5, len(turns)
            audio = np.concatenate([np.frombuffer(t.audio, np.float32) for t in turns if not t.gap])
            assert audio.size >= 4 * 3200
            assert float(np.sqrt(np.mean(audio**2))) > 0.05  # the tone, not zero-filled gaps
            assert tone_level(audio, TONE_HZ) > 0.8

            # server -> gateway: seconds of the output track came back, with the pushed tone in it
            rx = read_wav(out)
            assert rx.size >= 2.5 * 16000, rx.size
            windows = rx[: rx.size // 3200 * 3200].reshape(-1, 3200)  # 200 ms each
            found = [w for w in windows if np.abs(w).max() > BACK_AMPLITUDE / 2 and tone_level(w, BACK_HZ) > 0.8]
            assert found, [round(tone_level(w, BACK_HZ), 3) for w in windows]  # (the model babbles around it)

            await wait_until(lambda: len(edge.rt.calls) == 0, timeout=5)
        finally:
            inputs.close()


async def test_webrtcbin_with_ecdsa_only_ciphers_fails_as_dtls_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bug, reintroduced: aiortc's ECDSA-only list. The call's end reason names DTLS, not ICE."""
    monkeypatch.setattr(dtls, "CIPHERS", ECDSA_ONLY)
    async with running_edge(edge_settings(api_keys=["gw-key"])) as edge:
        calls: list[Any] = []
        original_add = edge.rt.calls.add

        def spy(call: Any) -> None:
            calls.append(call)
            original_add(call)

        monkeypatch.setattr(edge.rt.calls, "add", spy)
        summary = await gst_call(edge.url, "gw-key", "pcmu", tmp_path / "rx.wav")
        assert summary["status"] == 201 and not summary["connected"], summary
        assert summary["dtls_state"] == "failed" and summary["ice_state"] in ("connected", "completed"), summary
        assert len(calls) == 1
        call = calls[0]
        await wait_until(lambda: call.state == "closed", timeout=5)
        assert call.end_reason == "dtls_failed"
        assert_released(edge.rt, call)
