"""Compile the device kernels to PTX with no GPU present (for tests and
for checking what a kernel compiles to before a GPU is at hand)."""

from __future__ import annotations

import contextlib
import re
from typing import Any

__all__ = ["compile_kernel", "float64_instructions"]


@contextlib.contextmanager
def _no_device(cc: tuple[int, int]):
    """Numba-CUDA compiles a kernel's device functions (the bodies) for the
    current device's compute capability, which it asks the driver for, even
    when ``compile_ptx`` is given ``cc``. With no driver that fails, so for
    the duration of the compilation the dispatcher module's name for "the
    current device" answers with a stand-in that has only ``cc``. This is
    the one private hook of the PTX check; nothing else depends on it."""
    from numba.cuda import dispatcher

    class _Device:
        compute_capability = cc

    real = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _Device()
    try:
        yield
    finally:
        dispatcher.get_current_device = real


def compile_kernel(name: str, arg_types: tuple, cc: tuple[int, int] = (9, 0)) -> str:
    """PTX of body ``name``'s kernel (:func:`.kernels.kernel_source`) for the
    Numba types ``arg_types`` of its arguments (``n`` first) and compute
    capability ``cc``."""
    from numba import cuda

    from ismkernel.backends.cuda.kernels import kernel_source

    with _no_device(cc):
        ptx, _ = cuda.compile_ptx(kernel_source(name), tuple(arg_types), cc=cc)
    return ptx


def float64_instructions(ptx: str) -> list[Any]:
    """The PTX lines that compute or convert in float64."""
    return [line.strip() for line in ptx.splitlines() if re.search(r"\.f64\b", line)]
