"""Prometheus metrics, defined once per process (the default registry rejects duplicates)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STEP_SECONDS = Histogram(
    "microturn_step_seconds",
    "Model compute time of one batched micro-turn step",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0),
)
BATCH_SIZE = Histogram("microturn_batch_size", "Sessions per step", buckets=(1, 2, 4, 8, 16, 32, 64, 128))
GATHER_SECONDS = Histogram(
    "microturn_gather_seconds",
    "Time a ready batch waited for other sessions' inputs due before the step would end",
    buckets=(0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2),
)
ACTIVE_SESSIONS = Gauge("microturn_active_sessions", "Sessions open on this worker")
GAP_STEPS = Counter("microturn_gap_steps_total", "Turns stepped with zero-filled input because input was late")
STALE_INPUTS = Counter("microturn_stale_inputs_total", "Inputs dropped because their turn was already stepped")
BEHIND = Counter("microturn_worker_behind_total", "Steps that took longer than one micro-turn")
SKIPPED_TURNS = Counter(
    "microturn_skipped_turns_total", "Turns skipped (not gap-stepped) because a session's input leapt ahead"
)
SESSION_FAILURES = Counter("microturn_session_failures_total", "Sessions closed because their step raised")
TEXT_TOKENS_DROPPED = Counter(
    "microturn_text_tokens_dropped_total", "Typed-text tokens dropped because the session's text backlog was full"
)

# --- edge (signaling/) ---------------------------------------------------------------------
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
CALLS_ACTIVE = Gauge("microturn_calls_active", "Calls held by this edge (setting up or connected)")
CALLS_STARTED = Counter("microturn_calls_started_total", "Calls answered with 201")
CALLS_ENDED = Counter("microturn_calls_ended_total", "Calls torn down, by reason", ["reason"])
HTTP_REJECTED = Counter("microturn_http_rejected_total", "API requests answered with an error", ["code"])
TURN_LATENCY = Histogram(
    "microturn_turn_latency_seconds",
    "Last input sample of a micro-turn in -> first output sample of that turn handed to the output track",
    buckets=_LATENCY_BUCKETS,
)
EDGE_ADDED_LATENCY = Histogram(
    "microturn_edge_added_latency_seconds",
    "Turn latency minus the model step time: what the edge, bus and worker scheduling add",
    buckets=_LATENCY_BUCKETS,
)
PLAYOUT_UNDERRUNS = Counter("microturn_playout_underruns_total", "Output track ran dry while playing")
PLAYOUT_RESYNCS = Counter(
    "microturn_playout_resyncs_total",
    "Output track asked for a frame over 60 ms late (a stalled event loop) and skipped ahead",
)
PLAYOUT_QUEUED = Histogram(
    "microturn_playout_queued_seconds",
    "Model audio queued ahead of a turn in its call's playout buffer when the turn arrives: latency"
    " the caller hears on top of the turn latency",
    buckets=_LATENCY_BUCKETS,
)
PLAYOUT_STEERED_FRAMES = Counter(
    "microturn_playout_steered_frames_total",
    "Frames quiet steering added (stretched) or skipped (compressed) where the model was silent",
    ["direction"],
)
PLAYOUT_DROPPED_SAMPLES = Counter(
    "microturn_playout_dropped_samples_total", "Model audio dropped because the playout buffer was full"
)
INPUT_TURNS_DROPPED = Counter(
    "microturn_input_turns_dropped_total", "Assembled input turns dropped because the edge fell behind"
)
INPUT_GAP_TURNS = Counter("microturn_input_gap_turns_total", "Input turns with zero-filled (lost) audio")
EVENTS_DROPPED = Counter("microturn_events_dropped_total", "Server events not sent, by reason", ["reason"])
CLIENT_EVENT_ERRORS = Counter("microturn_client_event_errors_total", "Rejected client events, by code", ["code"])

# --- background agents (agents/worker.py) ----------------------------------------------------
# outcome: done | failed (dead-lettered or given up) | cancelled; a bounded label set
AGENT_TASKS = Counter("microturn_agent_tasks_total", "Background tasks finished by this agent, by outcome", ["outcome"])
AGENT_RETRIES = Counter("microturn_agent_retries_total", "Background task attempts retried after a failed attempt")

# --- edge placement on workers (signaling/workers.py; issue 12) ------------------------------
# outcome: placed | refused (full/draining/error reply) | timeout (no reply) | full (no worker left)
PLACEMENTS = Counter("microturn_placements_total", "Session placement attempts by this edge, by outcome", ["outcome"])
PLACEMENT_SECONDS = Histogram(
    "microturn_placement_seconds",
    "Reserve + SessionOpen round trip until a worker accepted a session",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 3.0),
)
# reason: worker_draining | worker_lost; outcome: moved | lost (no worker could take it)
SESSION_MOVES = Counter(
    "microturn_session_moves_total", "Sessions placed again after their worker left", ["reason", "outcome"]
)
POOL_SLOTS = Gauge("microturn_pool_slots", "Worker slots this edge sees (kind: capacity | active)", ["kind"])
