"""Device memory: the only module of ismkernel that imports CuPy."""

from __future__ import annotations

from typing import Any

__all__ = ["probe", "free_bytes", "is_device_array", "to_device", "to_host"]


def probe() -> tuple[bool, str]:
    """Whether a CUDA device can be used, and if not, why."""
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install 'ismkernel[gpu]')"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDARuntimeError without a driver
        return False, f"CuPy cannot reach a CUDA device: {err}"
    if n < 1:
        return False, "no CUDA device is visible"
    return True, ""


def free_bytes() -> int:
    """Free memory of the current device, in bytes."""
    import cupy

    free, _ = cupy.cuda.runtime.memGetInfo()
    return int(free)


def is_device_array(x: Any) -> bool:
    return hasattr(x, "__cuda_array_interface__")


def to_device(x: Any) -> Any:
    import cupy

    return cupy.asarray(x)


def to_host(x: Any) -> Any:
    import cupy

    return cupy.asnumpy(x)
