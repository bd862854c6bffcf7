"""The thread budget rule (infra/threads.py): a pure function of the cores and an override."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.threads import ENV_VAR, available_cores, cgroup_cpu_quota, override_from_env, torch_threads_for


@pytest.mark.parametrize(("cores", "want"), [(1, 1), (2, 1), (3, 2), (4, 3), (8, 7), (64, 63)])
def test_default_keeps_one_core_for_the_loop_and_codecs(cores: int, want: int) -> None:
    assert torch_threads_for(cores) == want


@pytest.mark.parametrize("cores", [1, 2, 16])
def test_override_wins_whatever_the_cores(cores: int) -> None:
    assert torch_threads_for(cores, 2) == 2
    assert torch_threads_for(cores, 5) == 5


def test_override_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        torch_threads_for(4, 0)


def test_env_override_parsed() -> None:
    assert override_from_env({}) is None
    assert override_from_env({ENV_VAR: " "}) is None
    assert override_from_env({ENV_VAR: "3"}) == 3
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match=ENV_VAR):
            override_from_env({ENV_VAR: bad})


def test_cgroup_quota_caps_the_cores(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None  # no cpu.max: no quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    assert available_cores(tmp_path) >= 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: torch may use a second core's half
    assert cgroup_cpu_quota(tmp_path) == 1.5
    assert available_cores(tmp_path) == min(2, available_cores(tmp_path / "none"))
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cores(tmp_path) == 1
