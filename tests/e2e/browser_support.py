"""Helpers for the browser end-to-end test: a real `microturn serve` subprocess, a speech wav
for Chromium's fake microphone, and the Chromium command line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from math import gcd
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts"


def chromium_args(wav: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_speech_wav(path: Path, text: str, rate: int = 48000) -> Path:
    """Speak `text` with espeak-ng into a 16-bit mono wav at `rate` (what Chromium's fake
    capture device reads; it loops the file)."""
    import numpy as np
    import soundfile as sf
    from scipy.signal import resample_poly

    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), text], check=True, capture_output=True)
    audio, sr = sf.read(raw, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != rate:
        g = gcd(sr, rate)
        audio = resample_poly(audio, rate // g, sr // g).astype(np.float32)
    # half a second of silence between loops, so it sounds like turns
    audio = np.concatenate([audio, np.zeros(rate // 2, np.float32)])
    sf.write(path, np.clip(audio, -1, 1), rate, subtype="PCM_16")
    raw.unlink(missing_ok=True)
    return path


class Server:
    """`microturn serve` as a subprocess on a free port; its log goes to a file."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"server-{self.port}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        full_env = {
            **os.environ,
            "MICROTURN_PORT": str(self.port),
            "MICROTURN_HOST": "127.0.0.1",
            "MICROTURN_CHECKPOINT": str(tmp / "no-checkpoint"),
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "signaling.cli", "serve"],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def get_json(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=2) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read() or b"{}")
            except ValueError:
                return e.code, {}

    def wait_ready(self, timeout: float = 90.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before ready:\n{self.log()}")
            try:
                status, body = self.get_json("/readyz")
                if status == 200:
                    return body
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"server not ready within {timeout}s:\n{self.log()}")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code (kills and raises on a hang)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise TimeoutError(f"server ignored SIGTERM for {timeout}s:\n{self.log()}") from None
        self._log.close()
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None
