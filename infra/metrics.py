"""Prometheus metrics, defined once per process (the default registry rejects duplicates)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STEP_SECONDS = Histogram(
    "microturn_step_seconds",
    "Model compute time of one batched micro-turn step",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0),
)
BATCH_SIZE = Histogram("microturn_batch_size", "Sessions per step", buckets=(1, 2, 4, 8, 16, 32, 64, 128))
ACTIVE_SESSIONS = Gauge("microturn_active_sessions", "Sessions open on this worker")
GAP_STEPS = Counter("microturn_gap_steps_total", "Turns stepped with zero-filled input because input was late")
STALE_INPUTS = Counter("microturn_stale_inputs_total", "Inputs dropped because their turn was already stepped")
BEHIND = Counter("microturn_worker_behind_total", "Steps that took longer than one micro-turn")
