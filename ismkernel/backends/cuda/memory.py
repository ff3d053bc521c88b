"""Device memory and streams: the only module of ismkernel that imports CuPy."""

from __future__ import annotations

import functools
import sys
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = [
    "probe",
    "cupy",
    "free_bytes",
    "is_device_array",
    "current_stream",
    "numba_stream",
    "use_stream",
    "to_device",
    "to_host",
    "to_host_all",
    "precision",
    "device_name",
    "OutOfMemory",
]


@functools.lru_cache(maxsize=1)
def probe() -> tuple[bool, str]:
    """Whether CuPy and Numba can use a CUDA device, and if not, why (asked
    once per process)."""
    try:
        import cupy
    except ImportError:
        return False, 'CuPy is not installed (pip install "ismkernel[gpu]")'
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDARuntimeError without a driver
        return False, f"CuPy cannot reach a CUDA device ({err})"
    if n < 1:
        return False, "no CUDA device is visible"
    try:
        from numba import cuda

        if not cuda.is_available():
            return False, "Numba cannot reach the CUDA device (numba-cuda missing?)"
    except Exception as err:
        return False, f"Numba's CUDA target cannot be loaded ({err})"
    return True, ""


def cupy() -> Any:
    import cupy

    return cupy


class OutOfMemory(Exception):
    """Stands for CuPy's out-of-memory error where CuPy is absent."""


def out_of_memory_errors() -> tuple:
    """The exceptions a device allocation raises when memory runs out."""
    mod = sys.modules.get("cupy")
    if mod is None:
        return (OutOfMemory,)
    return (mod.cuda.memory.OutOfMemoryError, OutOfMemory)


def free_bytes() -> int:
    """Free memory of the current device, in bytes, counting what CuPy's
    memory pool holds but does not use."""
    import cupy

    free, _ = cupy.cuda.runtime.memGetInfo()
    pool = cupy.get_default_memory_pool()
    return int(free + pool.free_bytes())


def device_name() -> str:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def is_device_array(x: Any) -> bool:
    return type(x).__module__.startswith("cupy")


def current_stream() -> Any:
    import cupy

    return cupy.cuda.get_current_stream()


def numba_stream(stream: Any) -> Any:
    """CuPy ``stream`` as a Numba stream (kernels are launched on it)."""
    from numba import cuda

    return cuda.external_stream(stream.ptr)


@contextmanager
def use_stream(stream: Any, device_id: int):
    """Makes ``stream`` on device ``device_id`` current in this thread."""
    import cupy

    with cupy.cuda.Device(device_id), stream:
        yield


def to_device(x: Any) -> Any:
    import cupy

    return cupy.asarray(x)


def to_host(x: Any, stream: Any = None) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    import cupy

    return cupy.asnumpy(x, stream=stream)


def to_host_all(arrays: list, stream: Any) -> list:
    """Device ``arrays`` copied to the host: every copy queued on ``stream``
    into page-locked memory, then one wait for them all."""
    import cupyx

    out = []
    for a in arrays:
        if isinstance(a, np.ndarray):
            out.append(a)
            continue
        host = cupyx.empty_pinned(a.shape, dtype=a.dtype)
        a.get(stream=stream, out=host, blocking=False)
        out.append(host)
    stream.synchronize()
    return out


@contextmanager
def precision(name: str):
    """cuBLAS float32 GEMMs in ``name`` precision while the block runs:
    ``"float32"`` strict float32 (even where ``CUPY_TF32=1`` is set),
    ``"tf32"`` TF32 tensor cores (inputs rounded to 10 bits of mantissa,
    sums in float32)."""
    # CuPy's per-dtype compute type is module state of a private module; it
    # is the one switch CuPy offers for this.
    from cupy._core import _routines_linalg as linalg

    kind = linalg.COMPUTE_TYPE_TF32 if name == "tf32" else linalg.COMPUTE_TYPE_FP32
    before = linalg.get_compute_type(np.float32)
    linalg.set_compute_type(np.float32, kind)
    try:
        yield
    finally:
        linalg.set_compute_type(np.float32, before)
