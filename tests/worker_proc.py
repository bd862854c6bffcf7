"""`microturn worker` as a real subprocess for multi-process tests (tiny preset, random weights)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
TTL_S = 1.5  # heartbeat TTL: short, so a killed worker drops out of placement quickly


class WorkerProc:
    def __init__(self, url: str, logdir: Path, worker_id: str, *, max_sessions: int = 3, drain_s: float = 20.0) -> None:
        self.worker_id = worker_id
        self.port = free_port()
        self.logfile = logdir / f"worker-{worker_id}.log"
        env = {**os.environ, "MICROTURN_CHECKPOINT": str(logdir / "no-checkpoint"), "MICROTURN_PRESET": "tiny"}
        with open(self.logfile, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "signaling.cli", "worker",
                    "--redis", url,
                    "--worker-id", worker_id,
                    "--max-sessions", str(max_sessions),
                    "--port", str(self.port),
                    "--drain-s", str(drain_s),
                    "--ttl-s", str(TTL_S),
                ],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
