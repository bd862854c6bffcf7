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
