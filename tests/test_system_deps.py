"""scripts/system-deps.sh and the Makefile steps that call it: what `make test` / `make run`
do on a machine that lacks the Debian packages. dpkg-query, apt-get and id are replaced by
fakes on PATH, so nothing is installed and the real machine's state does not matter."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "system-deps.sh"

# What the test suite needs from Debian; each line names the tests that fail without it.
NEEDED_BY_TESTS = {
    "espeak-ng",  # tests/model/data/test_espeak.py, test_generate.py, test_vocoder.py, ...
    "chromium",  # tests/e2e/test_call_browser.py (/usr/bin/chromium)
    "nodejs",  # tests/e2e/test_web_static.py (node --check)
    "redis-server",  # background agents against a real Redis server
    # GStreamer webrtcbin interop test
    "python3-gi",
    "gir1.2-gstreamer-1.0",
    "gir1.2-gst-plugins-bad-1.0",
    "gstreamer1.0-nice",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-bad",
    # MBROLA training voices: tests/model/data/test_espeak.py, test_generate.py (train clips)
    "mbrola",
    "mbrola-us1",
    "mbrola-us2",
    "mbrola-en1",
}

FAKE_DPKG_QUERY = """#!/bin/sh
# Like `dpkg-query -W -f='${Package} ${Status}\\n' PKG...`: installed unless named in
# FAKE_MISSING (prints nothing, exit 1) or FAKE_CONFIG_ONLY (removed, config files kept).
rc=0
for p in "$@"; do
  case "$p" in -*) continue ;; esac
  case " $FAKE_MISSING " in *" $p "*) rc=1; continue ;; esac
  case " $FAKE_CONFIG_ONLY " in *" $p "*) echo "$p deinstall ok config-files"; continue ;; esac
  echo "$p install ok installed"
done
exit $rc
"""

FAKE_APT_GET = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
# FAKE_APT_STALE: the first install fails, as on an image without package lists.
if [ -n "$FAKE_APT_STALE" ] && ! grep -q update "$FAKE_LOG"; then
  case " $* " in *" install "*) exit 100 ;; esac
fi
exit 0
"""


def _fake_bin(tmp_path: Path, uid: int) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in {
        "dpkg-query": FAKE_DPKG_QUERY,
        "apt-get": FAKE_APT_GET,
        "id": f"#!/bin/sh\necho {uid}\n",
    }.items():
        path = bin_dir / name
        path.write_text(body)
        path.chmod(0o755)
    return bin_dir


def _run(
    tmp_path: Path,
    target: str,
    *,
    missing: str = "",
    config_only: str = "",
    uid: int = 1000,
    stale: bool = False,
    py: str = sys.executable,
    extra_env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Runs the script with the fakes; returns the process and the apt-get calls it made."""
    bin_dir = _fake_bin(tmp_path, uid)
    log = tmp_path / "apt.log"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PY": py,
        "FAKE_MISSING": missing,
        "FAKE_CONFIG_ONLY": config_only,
        "FAKE_LOG": str(log),
        "FAKE_APT_STALE": "1" if stale else "",
        "MICROTURN_APT_SOURCES_DIR": str(tmp_path / "sources.list.d"),  # never the machine's
        **(extra_env or {}),
    }
    proc = subprocess.run(["bash", str(SCRIPT), target], env=env, capture_output=True, text=True, timeout=30)
    calls = log.read_text().splitlines() if log.exists() else []
    return proc, calls


def _listed(target: str) -> list[str]:
    out = subprocess.run(["bash", str(SCRIPT), "--list", target], capture_output=True, text=True, check=True).stdout
    return out.split()


def test_test_target_lists_every_package_the_tests_need() -> None:
    assert not NEEDED_BY_TESTS - set(_listed("test"))
    # serving needs none of them: `make run` must not pull a browser or speech engine
    assert not NEEDED_BY_TESTS & set(_listed("run"))


def test_satisfied_machine_installs_nothing_and_prints_nothing(tmp_path: Path) -> None:
    proc, calls = _run(tmp_path, "test", uid=0)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == proc.stderr == ""
    assert calls == []


def test_missing_as_user_stops_with_one_line_naming_the_command(tmp_path: Path) -> None:
    proc, calls = _run(tmp_path, "test", missing="espeak-ng redis-server")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "microturn: missing system packages: espeak-ng redis-server"
        " — run: sudo apt-get install -y espeak-ng redis-server"
    ]
    assert calls == []


def test_removed_package_with_config_left_counts_as_missing(tmp_path: Path) -> None:
    # `apt-get remove` leaves status "deinstall ok config-files": dpkg-query still answers
    proc, _ = _run(tmp_path, "test", config_only="chromium")
    assert proc.returncode == 1
    assert "missing system packages: chromium —" in proc.stderr


def test_missing_as_root_installs_only_what_is_missing(tmp_path: Path) -> None:
    proc, calls = _run(tmp_path, "test", missing="chromium gstreamer1.0-nice", uid=0)
    assert proc.returncode == 0, proc.stderr
    assert len(calls) == 1
    assert calls[0].endswith("install -y -q chromium gstreamer1.0-nice")
    assert "update" not in calls[0]


def test_root_without_package_lists_updates_then_installs(tmp_path: Path) -> None:
    proc, calls = _run(tmp_path, "test", missing="sox", uid=0, stale=True)
    assert proc.returncode == 0, proc.stderr
    assert [c.split()[-4:] if "install" in c else c.split()[-2:] for c in calls] == [
        ["install", "-y", "-q", "sox"],
        ["update", "-q"],
        ["install", "-y", "-q", "sox"],
    ]


def _os_release(tmp_path: Path, text: str) -> dict[str, str]:
    (tmp_path / "sources.list.d").mkdir(exist_ok=True)
    path = tmp_path / "os-release"
    path.write_text(text)
    return {"MICROTURN_OS_RELEASE": str(path)}


def test_a_missing_nonfree_voice_enables_contrib_and_non_free_once(tmp_path: Path) -> None:
    env = _os_release(tmp_path, 'ID=debian\nVERSION_CODENAME="bookworm"\n')
    proc, calls = _run(tmp_path, "test", missing="mbrola-us1 sox", uid=0, extra_env=env)
    assert proc.returncode == 0, proc.stderr
    sources = tmp_path / "sources.list.d" / "microturn-contrib-non-free.sources"
    lines = sources.read_text().splitlines()
    assert "Suites: bookworm" in lines and "Components: contrib non-free" in lines
    assert "enabling Debian's contrib and non-free" in proc.stderr
    # the new components' package lists are read before the install
    assert len(calls) == 2 and calls[0].endswith("update -q") and calls[1].endswith("install -y -q sox mbrola-us1")
    (tmp_path / "apt.log").unlink()
    proc, calls = _run(tmp_path, "test", missing="mbrola-us1", uid=0, extra_env=env)
    assert proc.returncode == 0 and "enabling" not in proc.stderr
    assert len(calls) == 1 and "update" not in calls[0]


def test_a_nonfree_voice_on_another_system_stops_with_one_line(tmp_path: Path) -> None:
    env = _os_release(tmp_path, "ID=ubuntu\nVERSION_CODENAME=noble\n")
    proc, calls = _run(tmp_path, "test", missing="mbrola-en1", uid=0, extra_env=env)
    assert proc.returncode == 1 and calls == []
    assert proc.stderr.splitlines()[-1].startswith("microturn: mbrola-en1 is in Debian's contrib/non-free components")


def test_run_target_ignores_test_only_packages(tmp_path: Path) -> None:
    proc, calls = _run(tmp_path, "run", missing="espeak-ng chromium redis-server")
    assert proc.returncode == 0, proc.stderr
    assert calls == []


def test_python_without_ensurepip_needs_python3_venv(tmp_path: Path) -> None:
    # Debian's system python3 without python3-venv: `python3 -m venv` would fail in make
    fake_py = tmp_path / "python3"
    fake_py.write_text("#!/bin/sh\nexit 1\n")
    fake_py.chmod(0o755)
    proc, _ = _run(tmp_path, "run", missing="python3-venv", py=str(fake_py))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "microturn: missing system packages: python3-venv — run: sudo apt-get install -y python3-venv"
    ]


@pytest.mark.parametrize(("target", "packages"), [("test", "test"), ("run", "run"), ("checkpoint", "test")])
def test_make_target_runs_the_system_deps_step_first(target: str, packages: str) -> None:
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    step = next(i for i, line in enumerate(lines) if f"scripts/system-deps.sh {packages}" in line)
    mains = ("pytest", "microturn serve", "model.data.generate")
    main = next(i for i, line in enumerate(lines) if any(m in line for m in mains))
    assert step < main


def test_make_stops_on_old_python_with_one_line(tmp_path: Path) -> None:
    old_py = tmp_path / "python3"
    old_py.write_text('#!/bin/sh\n[ "$1" = -V ] && echo "Python 3.9.2" && exit 0\nexit 1\n')
    old_py.chmod(0o755)
    proc = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "python-check", f"PY={old_py}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("microturn:")]
    assert ours == [
        f"microturn: needs Python >= 3.11, but {old_py} is Python 3.9.2;"
        " install one and run: make PY=python3.11 python-check"
    ]
