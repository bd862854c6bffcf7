"""Import-time guarantees, each checked in a fresh interpreter so this session's imports don't leak in.

- model.kernels imports (and serves CPU tensors) without triton, and never imports triton itself;
- TRITON_INTERPRET set after torch and model.kernels were imported still takes effect, which is
  what lets conftest.py enable the interpreter whatever test module was collected first;
- set after triton itself was imported it cannot take effect, and the launch says so clearly.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


def _run(code: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_package_works_without_triton() -> None:
    _run(
        """
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import pytest, torch
        import model.kernels as k

        assert not k.triton_available()
        x, w = torch.randn(2, 8), torch.randn(8)
        assert torch.equal(k.rms_norm(x, w), k.rms_norm_reference(x, w))
        with pytest.raises(RuntimeError, match="not installed"):
            k.rms_norm(x, w, force_triton=True)
        """
    )


def test_interpreter_enabled_after_importing_the_package_applies() -> None:
    _run(
        """
        import os, sys
        import torch
        import model.kernels as k

        assert "triton" not in sys.modules, "model.kernels imported triton eagerly"
        os.environ["TRITON_INTERPRET"] = "1"
        x, w = torch.randn(3, 40), torch.randn(40, 24)
        torch.testing.assert_close(k.matmul(x, w, force_triton=True), x @ w, atol=1e-5, rtol=1e-5)
        """
    )


def test_interpreter_enabled_after_importing_triton_fails_clearly() -> None:
    _run(
        """
        import os
        import pytest, torch, triton
        import model.kernels as k

        os.environ["TRITON_INTERPRET"] = "1"
        x, w = torch.randn(3, 40), torch.randn(40, 24)
        with pytest.raises(RuntimeError, match="before triton is first imported"):
            k.matmul(x, w, force_triton=True)
        """
    )
