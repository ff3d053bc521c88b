"""Executors. ``reference`` is dense NumPy, the specification of the others."""

from __future__ import annotations

from ismkernel.errors import BackendUnavailableError

__all__ = ["BACKENDS", "resolve_backend"]

#: Backends this version implements.
BACKENDS = ("reference", "cpu")


def resolve_backend(name: str) -> str:
    """The backend to run for ``name`` (``"auto"`` picks the best available)."""
    if name == "auto":
        return "cpu"  # the cuda backend is not part of this version
    if name not in BACKENDS:
        planned = {"cuda"}
        why = (
            " is not available in this version: its kernels are written and "
            "tested under the CUDA simulator, but the executor that runs a plan on "
            "the device has not been validated on a GPU yet"
            if name in planned
            else " is unknown"
        )
        raise BackendUnavailableError(
            f"backend {name!r}{why}; available: {', '.join(BACKENDS + ('auto',))}"
        )
    return name
