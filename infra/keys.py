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
    return "bg:tasks"


def bg_results(session_id: str) -> str:
    return f"bg:results:{session_id}"
