"""Backends: one plan walker (:mod:`.engine`), several devices.

``reference`` is dense NumPy, the specification of the others; ``cpu`` runs
the incremental plan with NumPy, BLAS and Numba kernels; ``cuda`` with CuPy,
cuBLAS and Numba-CUDA kernels on a GPU, and ``cuda-emulated`` runs that same
code path on the host (NumPy, ``@njit`` loops over the kernels' grids), which
is how it is tested without a GPU. Every backend has
one entry, ``get_backend(name).run(plan, feeds, sink)``, and builds the plan
it runs with ``get_backend(name).plan(...)`` (the device-neutral plan lowered
with the device's tactics).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ismkernel.errors import BackendUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    from ismkernel.backends.engine import Backend

__all__ = ["BACKENDS", "KERNELS", "get_backend", "resolve_backend"]

#: Backends this version implements. ``auto`` is ``cuda`` where CuPy and
#: numba-cuda reach a GPU, else ``cpu``.
BACKENDS = ("reference", "cpu", "cuda", "cuda-emulated")

#: Every kernel the walker calls, with its parameters in order: each device's
#: kernel table has all of them, with the same names and argument order.
#: A *window* of a node for mutant ``m`` is rows ``[start[m], start[m] +
#: width)``; a *tile* holds the mutant's values on its window; ``ref`` holds
#: the reference values of every row, per sequence; ``seq`` maps each mutant
#: to its sequence.
KERNELS: dict[str, tuple[str, ...]] = {
    # rows of each mutant's values: its tile where it covers them, else the
    # reference, else ``pad`` (with ``add``: added to ``out``)
    "gather": (
        "tile",
        "tile_start",
        "ref",
        "seq",
        "start",
        "width",
        "pad",
        "out",
        "add",
    ),
    # the tile minus the reference, on the tile's window
    "change": ("tile", "tile_start", "ref", "seq", "out"),
    # that change summed over the window's rows
    "change_sum": ("tile", "tile_start", "ref", "seq"),
    # a change kept alone, summed over its rows
    "sum_rows": ("x",),
    # per mutant: its change is zero on every row
    "all_zero": ("x",),
    # per mutant: its tile equals the reference on every row
    "unchanged": ("tile", "tile_start", "ref", "seq"),
    # max(x, 0) in place
    "relu": ("x",),
    # max or average pooling of each mutant's rows onto its output window
    "pool_window": (
        "tile",
        "tile_start",
        "ref",
        "seq",
        "out_start",
        "width",
        "pool",
        "stride",
        "left",
        "is_max",
        "out",
    ),
    # first convolution: reference window plus the taps of the new row minus
    # those of the old one
    "lookup_add": (
        "ref_out",
        "seq",
        "alt_taps",
        "alt",
        "ref_taps",
        "pair",
        "pos",
        "out_start",
        "width",
        "left",
        "stride",
        "dilation",
        "out",
    ),
    # a delta convolution's per-tap products added onto the reference window,
    # then its fused epilogue (ReLU, residual, the result's change, row sums)
    "col2im_ref": (
        "out",
        "ref",
        "seq",
        "out_start",
        "taps",
        "in_start",
        "left",
        "stride",
        "dilation",
        "relu",
        "residual",
        "change",
        "sums",
    ),
}

_INSTANCES: dict[str, Backend] = {}


def resolve_backend(name: str) -> str:
    """The backend to run for ``name`` (``"auto"``: ``cuda`` where a GPU can
    be used, else ``cpu``)."""
    if name == "auto":
        from ismkernel.backends.cuda import memory

        return "cuda" if memory.probe()[0] else "cpu"
    if name not in BACKENDS:
        raise BackendUnavailableError(
            f"backend {name!r} is unknown; available: {', '.join(BACKENDS + ('auto',))}"
        )
    return name


def get_backend(name: str = "auto") -> Backend:
    """The backend ``name`` (``auto``: the best available), created once.
    ``cuda`` raises :class:`~ismkernel.errors.BackendUnavailableError`,
    saying why, where no GPU can be used."""
    name = resolve_backend(name)
    if name not in _INSTANCES:
        if name == "cpu":
            from ismkernel.backends.cpu import CpuBackend

            _INSTANCES[name] = CpuBackend()
        elif name == "cuda":
            from ismkernel.backends.cuda import CudaBackend

            _INSTANCES[name] = CudaBackend()
        elif name == "cuda-emulated":
            from ismkernel.backends.cuda import EmulatedBackend

            _INSTANCES[name] = EmulatedBackend()
        else:
            from ismkernel.backends.reference import ReferenceBackend

            _INSTANCES[name] = ReferenceBackend()
    return _INSTANCES[name]
