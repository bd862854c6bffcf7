"""`microturn eval --live`: a real aiortc client against a real `microturn serve`, in real time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf

from model.eval import synth
from signaling.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = _free_port()
    env = {**os.environ, "MICROTURN_PORT": str(port), "MICROTURN_CHECKPOINT": str(tmp_path / "none")}
    proc = subprocess.Popen([sys.executable, "-m", "signaling.cli", "serve"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)


def test_live_eval_writes_aligned_outputs_and_report(server: str, tmp_path: Path) -> None:
    root = tmp_path / "bench"
    clip = synth.turn_taking_clip(root, "c0")
    n_in = sf.info(str(clip / "input.wav")).frames
    out = tmp_path / "report"
    assert main(["eval", "--root", str(root), "--live", server, "--out", str(out), "--no-baseline"]) == 0
    audio, sr = sf.read(str(clip / "output.wav"))
    assert len(audio) == n_in and sr == sf.info(str(clip / "input.wav")).samplerate
    assert abs(audio).max() > 0  # the server's (random-weights) voice came back
    words = json.loads((clip / "output.json").read_text())
    assert isinstance(words["chunks"], list)
    assert "live over WebRTC" in (out / "report.md").read_text()


def test_live_eval_unreachable_server_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "bench"
    synth.turn_taking_clip(root, "c0")
    url = f"http://127.0.0.1:{_free_port()}"
    assert main(["eval", "--root", str(root), "--live", url, "--no-baseline"]) == 2
    assert f"live eval against {url}" in capsys.readouterr().err
