"""Dispatch policy shared by the kernels: when to run Triton, and a clear error when it can't.

Triton is an optional extra and serving must work on CPU-only boxes, so importing this package
never imports triton: the `@triton.jit` kernels live in private `_*_triton.py` modules imported
on first launch.

Running on CPU tensors needs the interpreter, and `@triton.jit` picks interpreter or compiler when
it *decorates* a function, reading `TRITON_INTERPRET` at that moment. That includes triton's own
helpers (`tl.zeros`, `tl.sum`, `tl.sigmoid`, ...), which are decorated by `import triton`. So the
variable must be set before the first `import triton` in the process; later is too late. Because
this package defers that import, code may still import model.kernels before setting it.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def triton_available() -> bool:
    """True when `import triton` succeeds (cached: the answer cannot change within a process)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreter_ready() -> bool:
    """Whether triton was imported with TRITON_INTERPRET on, i.e. its own helpers are interpreted."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)


def use_triton(x: torch.Tensor, force_triton: bool) -> bool:
    """Triton for CUDA tensors when triton is installed, or when the caller forces it (tests)."""
    return force_triton or (x.is_cuda and triton_available())


def check_triton_launch(x: torch.Tensor) -> None:
    """Fail loudly before a launch that would otherwise crash deep inside triton.

    CPU tensors can only run under the interpreter; without it triton fails with the opaque
    "Cannot call @triton.jit'd outside of the scope of a kernel".
    """
    if not triton_available():
        raise RuntimeError("Triton kernel requested but triton is not installed (pip install '.[triton]')")
    if not x.is_cuda and not _interpreter_ready():
        raise RuntimeError(
            "Triton kernels on CPU tensors need TRITON_INTERPRET=1 set before triton is first imported "
            "(for pytest: at the top of tests/conftest.py)"
        )


def cdiv(a: int, b: int) -> int:
    """Ceiling division for grid sizes (avoids importing triton just for `triton.cdiv`)."""
    return -(-a // b)
