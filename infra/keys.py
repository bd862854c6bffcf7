"""Every bus topic / Redis key prefix in one place (DESIGN.md §3, §7, §9)."""

from __future__ import annotations

PREFIX = "mt"


def inputs(worker_id: str) -> str:
    """Micro-turn inputs for one worker (edge -> worker)."""
    return f"{PREFIX}:in:{worker_id}"


def outputs(session_id: str) -> str:
    """Micro-turn outputs of one session (worker -> edge)."""
    return f"{PREFIX}:out:{session_id}"


def bg_tasks() -> str:
    """Background tasks: one stream, consumed by the agents' consumer group (AGENT_GROUP)."""
    return "bg:tasks"


AGENT_GROUP = "agents"


def bg_dead() -> str:
    """Dead-letter stream: tasks that failed every attempt or were delivered too often."""
    return "bg:dead"


def bg_control() -> str:
    """TaskCancel / SessionEnded, broadcast to every agent."""
    return "bg:control"


def bg_results(session_id: str) -> str:
    """TaskEvents of one session's tasks, in order (agent -> edge)."""
    return f"bg:results:{session_id}"


# --- horizontal scale (DESIGN.md §9; issue 12) -------------------------------------------------


def workers() -> str:
    """Set of registered worker ids; an id whose hash expired is dropped on the next read."""
    return f"{PREFIX}:workers"


def worker(worker_id: str) -> str:
    """Hash of one worker (capacity, draining, started_at); its EXPIRE is the heartbeat TTL."""
    return f"{PREFIX}:worker:{worker_id}"


def worker_sessions(worker_id: str) -> str:
    """Set of the sessions reserved on or open on one worker (what placement counts)."""
    return f"{worker(worker_id)}:sessions"


def worker_ctl(worker_id: str) -> str:
    """Control stream of one worker: SessionOpen / SessionClose (edge -> worker)."""
    return f"{PREFIX}:ctl:{worker_id}"


def replies(edge_id: str) -> str:
    """ControlReplies for one edge (worker -> edge)."""
    return f"{PREFIX}:reply:{edge_id}"


def session_log(session_id: str) -> str:
    """Capped stream of one session's recent inputs and outputs, for failover."""
    return f"{PREFIX}:log:{session_id}"


def session_log_head(session_id: str) -> str:
    """One session's turn-0 record (it holds the attention sinks), kept past the log's trim."""
    return f"{session_log(session_id)}:head"
