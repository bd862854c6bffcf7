"""The engine's thread budget: how many torch intra-op threads a serving process gets.

One `microturn serve` process runs, on the same cores, the engine's step (torch intra-op
threads), the asyncio event loop (signaling, RTP, SRTP, the data channels: all Python, one
thread under the GIL) and aiortc's codec threads (an Opus/PCMU decoder thread per call and
the default executor that encodes). torch's default is one thread per core: its OpenMP
workers then compete with the loop for every core and the loop's 20 ms media deadlines slip.

The default keeps one core for the loop and the codecs and gives torch the rest
(`torch_threads_for`); the measurement behind it is in `tests/bench/bench_edge.py`
(`--torch-threads`), figures in the README's "Thread budget" section. Not torch-dependent, so
the rule is testable and importable by processes that never load torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "MICROTURN_TORCH_THREADS"
# Cores kept for the event loop and the codec threads: one Python thread holds the GIL, so a
# second reserved core would mostly idle.
EDGE_CORES = 1


def available_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota
    (a container limited to 2 CPUs on a 64-core host gets 2, not 64)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def cgroup_cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by `cpu.max` ("max 100000" = unlimited -> None); None when unreadable."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def torch_threads_for(cores: int, override: int | None = None) -> int:
    """torch intra-op threads for a serving process on `cores` cores: `override` when given,
    else every core but EDGE_CORES, at least one."""
    if override is not None:
        if override < 1:
            raise ValueError(f"torch threads must be >= 1, got {override}")
        return override
    return max(1, cores - EDGE_CORES)


def override_from_env(env: Mapping[str, str] = os.environ) -> int | None:
    """MICROTURN_TORCH_THREADS as an int (unset or empty = None); ValueError names the variable."""
    raw = env.get(ENV_VAR, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_VAR} must be a positive integer, got {raw!r}") from None
    if n < 1:
        raise ValueError(f"{ENV_VAR} must be >= 1, got {n}")
    return n


def apply_torch_threads(flag: int | None) -> tuple[int, int, str]:
    """Set torch's intra-op threads for this process: `flag`, else MICROTURN_TORCH_THREADS, else
    the default for the cores it has. Returns (threads, cores, source). Called before the engine
    thread starts: torch hands the count to each new thread's OpenMP pool."""
    import torch  # here: the rest of this module never loads it

    if flag is not None and flag < 1:
        raise ValueError(f"--torch-threads must be >= 1, got {flag}")
    env = override_from_env()
    override, source = (flag, "flag") if flag is not None else (env, "env") if env is not None else (None, "default")
    cores = available_cores()
    threads = torch_threads_for(cores, override)
    torch.set_num_threads(threads)
    return threads, cores, source
