"""The cuda device's kernel table: every kernel of
:data:`ismkernel.backends.KERNELS`, with the cpu kernels' names, arguments
and results, run from the bodies of :mod:`.bodies`.

A :class:`Kernels` table allocates with its array module and hands each
kernel's body and arguments to a *launcher*, which runs the body once per
output element:

- :func:`device_launcher`: ``@cuda.jit`` kernels, one thread per element,
  launched on a given stream (CuPy arrays on a GPU; NumPy arrays under the
  CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``);
- :func:`grid_launcher`: ``@njit`` loops over the same grid on the host (the
  ``cuda-emulated`` device).

Both are generated from each body's own parameters, so a body is written
once. Importing this module imports neither CuPy nor ``numba.cuda``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from ismkernel import config
from ismkernel.backends.cuda import bodies

__all__ = [
    "THREADS",
    "BODIES",
    "Kernels",
    "ArrayModule",
    "kernel_source",
    "grid_launcher",
    "device_launcher",
]

#: Threads per block of the device kernels (``config.CUDA_THREADS``).
THREADS = config.CUDA_THREADS

#: Every body a launcher runs, by name.
BODIES: dict[str, Callable] = {
    "gather": bodies.gather,
    "change": bodies.change,
    "change_sum": bodies.change_sum,
    "sum_rows": bodies.sum_rows,
    "all_zero": bodies.all_zero,
    "unchanged": bodies.unchanged,
    "relu": bodies.relu,
    "pool_window": bodies.pool_window,
    "lookup_add": bodies.lookup_add,
    "col2im_rows": bodies.col2im_rows,
    "col2im_columns": bodies.col2im_columns,
    "running_max": bodies.running_max,
}


def _params(body: Callable) -> list[str]:
    """The body's arguments before the element index."""
    return list(inspect.signature(body).parameters)[:-1]


def kernel_source(name: str) -> Callable:
    """The Python function of body ``name``'s CUDA kernel: thread ``i`` of
    ``n`` runs the body on element ``i`` (for ``cuda.jit``, the simulator,
    or ``cuda.compile_ptx``)."""
    from numba import cuda

    args = ", ".join(_params(BODIES[name]))
    src = (
        f"def {name}(n, {args}):\n"
        "    i = cuda.grid(1)\n"
        "    if i < n:\n"
        f"        body({args}, i)\n"
    )
    scope = {"cuda": cuda, "body": BODIES[name]}
    exec(compile(src, f"<cuda kernel {name}>", "exec"), scope)
    return scope[name]


def _loop_source(name: str) -> Callable:
    args = ", ".join(_params(BODIES[name]))
    src = f"def {name}(n, {args}):\n    for i in range(n):\n        body({args}, i)\n"
    scope = {"body": BODIES[name]}
    exec(compile(src, f"<grid loop {name}>", "exec"), scope)
    return scope[name]


_LOOPS: dict[str, Callable] = {}
_DEVICE: dict[str, Any] = {}


def grid_launcher() -> Callable:
    """Runs a body over its grid with ``@njit`` loops on the host, in element
    order (what a GPU runs in parallel; every element is independent).
    Division by zero gives inf or NaN, as on the device."""

    def launch(name: str, n: int, *args) -> None:
        loop = _LOOPS.get(name)
        if loop is None:
            loop = _LOOPS[name] = numba.njit(nogil=True, error_model="numpy")(
                _loop_source(name)
            )
        if n:
            loop(n, *args)

    return launch


def device_launcher(stream: Any = 0, threads: int | None = None) -> Callable:
    """Runs a body over its grid as a ``@cuda.jit`` kernel on ``stream`` (a
    Numba stream, 0 for the default one, or a callable giving the stream at
    each launch), one thread per element.

    CuPy arrays go to the kernels without the synchronisation Numba would
    otherwise do on the stream they name: every kernel is launched on the
    stream that produced them. NumPy arrays (the simulator's) are copied to
    the device once each, however many arguments name them, and back after
    the launch, so an output passed twice (the change written in place of
    the values) stays one array."""
    from numba import cuda

    block = int(threads or THREADS)

    def launch(name: str, n: int, *args) -> None:
        kernel = _DEVICE.get(name)
        if kernel is None:
            kernel = _DEVICE[name] = cuda.jit(kernel_source(name))
        if not n:
            return
        on = stream() if callable(stream) else stream
        copies: dict[int, tuple] = {}
        call = []
        for a in args:
            if isinstance(a, np.ndarray):
                if id(a) not in copies:
                    copies[id(a)] = (a, cuda.to_device(a, stream=on))
                call.append(copies[id(a)][1])
            elif hasattr(a, "__cuda_array_interface__"):
                call.append(cuda.as_cuda_array(a, sync=False))
            else:
                call.append(a)
        kernel[math.ceil(n / block), block, on](n, *call)
        for a, d in copies.values():
            d.copy_to_host(a, stream=on)

    return launch


class Kernels:
    """Every kernel of :data:`ismkernel.backends.KERNELS` on arrays of ``xp``,
    run by ``launch(name, n_elements, *args)``; the signatures and results
    are those of :mod:`ismkernel.backends.cpu.kernels`."""

    def __init__(self, xp: Any, launch: Callable):
        self.xp = xp
        self.launch = launch

    def _empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def gather(
        self, tile, tile_start, ref, seq, start, width, pad=0.0, out=None, add=False
    ):
        """Rows ``[start[m], start[m] + width)`` of each mutant's values: its
        tile where it covers them, else the reference, else ``pad`` (with
        ``add``, added to ``out``)."""
        n_mut = len(seq)
        if out is None:
            out = self._empty((n_mut, width, ref.shape[2]), ref.dtype)
        if tile is None:
            tile = self._empty((n_mut, 0, ref.shape[2]), ref.dtype)
            tile_start = start
        self.launch(
            "gather",
            out.size,
            self.xp.ascontiguousarray(tile),
            tile_start,
            ref,
            seq,
            start,
            ref.dtype.type(pad),
            bool(add),
            out,
        )
        return out

    def change(self, tile, tile_start, ref, seq, out=None):
        """Each mutant's values minus the reference on the tile's window."""
        if out is None:
            out = self._empty(tile.shape, tile.dtype)
        tile = self.xp.ascontiguousarray(tile)
        self.launch("change", tile.size, tile, tile_start, ref, seq, out)
        return out

    def change_sum(self, tile, tile_start, ref, seq):
        """Per mutant and channel, the change summed over the window's rows."""
        out = self._empty((tile.shape[0], tile.shape[2]), tile.dtype)
        tile = self.xp.ascontiguousarray(tile)
        self.launch("change_sum", out.size, tile, tile_start, ref, seq, out)
        return out

    def sum_rows(self, x):
        """Per mutant and channel, ``x`` summed over its rows in order."""
        out = self._empty((x.shape[0], x.shape[2]), x.dtype)
        self.launch("sum_rows", out.size, self.xp.ascontiguousarray(x), out)
        return out

    def all_zero(self, x):
        """Per mutant, whether its change is zero on every row."""
        out = self._empty(x.shape[0], np.bool_)
        self.launch("all_zero", len(out), self.xp.ascontiguousarray(x), out)
        return out

    def unchanged(self, tile, tile_start, ref, seq):
        """Per mutant, whether its window equals the reference exactly."""
        out = self._empty(len(seq), np.bool_)
        tile = self.xp.ascontiguousarray(tile)
        self.launch("unchanged", len(out), tile, tile_start, ref, seq, out)
        return out

    def relu(self, x):
        """``max(x, 0)`` in place."""
        if x.flags.c_contiguous:
            flat = x.reshape(-1)
            self.launch("relu", flat.size, flat)
        else:
            self.xp.maximum(x, x.dtype.type(0), out=x)
        return x

    def pool_window(
        self,
        tile,
        tile_start,
        ref,
        seq,
        out_start,
        width,
        pool,
        stride,
        left,
        is_max,
        out=None,
    ):
        """Max or average pooling of each mutant's rows on its output
        window."""
        if out is None:
            out = self._empty((len(seq), width, ref.shape[2]), ref.dtype)
        self.launch(
            "pool_window",
            out.size,
            self.xp.ascontiguousarray(tile),
            tile_start,
            ref,
            seq,
            out_start,
            int(pool),
            int(stride),
            int(left),
            bool(is_max),
            out,
        )
        return out

    def lookup_add(
        self,
        ref_out,
        seq,
        alt_taps,
        alt,
        ref_taps,
        pair,
        pos,
        out_start,
        width,
        left,
        stride,
        dilation,
        out=None,
    ):
        """First convolution on a mutated row: the reference window plus the
        taps of the new row minus those of the old one."""
        if out is None:
            out = self._empty((len(seq), width, ref_out.shape[2]), ref_out.dtype)
        self.launch(
            "lookup_add",
            out.size,
            ref_out,
            seq,
            alt_taps,
            alt,
            ref_taps,
            pair,
            pos,
            out_start,
            int(left),
            int(stride),
            int(dilation),
            out,
        )
        return out

    def col2im_ref(
        self,
        out,
        ref,
        seq,
        out_start,
        taps,
        in_start,
        left,
        stride,
        dilation,
        relu=False,
        residual=None,
        change=None,
        sums=None,
    ):
        """The reference output window plus the per-tap products landing on
        each row, then the fused epilogue (ReLU, residual, the result's
        change, its row sums), as the cpu kernel of that name. With
        ``sums``, one thread per mutant and channel walks the rows in order;
        otherwise one thread per element."""
        xp = self.xp
        empty = xp.empty((len(out_start), 0, out.shape[2]), dtype=out.dtype)
        mode, res, res_start, res_ref = 0, empty, out_start, empty
        if residual is not None:
            res, res_start, res_ref, is_change = residual
            mode = 2 if is_change else 1
            if res is None:
                res, res_start = empty, out_start
        emit, chg = 0, empty
        if change is not None:
            chg = change
            emit = 2 if change is out else 1
        if sums is not None and change is None:
            raise ValueError("sums of the change need the change (change=)")
        args = (
            out,
            ref,
            seq,
            out_start,
            taps,
            in_start,
            int(left),
            int(stride),
            int(dilation),
            bool(relu),
            mode,
            xp.ascontiguousarray(res),
            res_start,
            res_ref,
            emit,
            chg,
        )
        if sums is None:
            self.launch("col2im_rows", out.size, *args)
        else:
            self.launch("col2im_columns", sums.size, *args, sums)
        return out

    def running_max(self, x, out=None):
        """``np.maximum.accumulate(x, axis=1)`` of ``x`` (n, length, n_ch),
        into ``out`` if given."""
        if out is None:
            out = self._empty(x.shape, x.dtype)
        n = x.shape[0] * x.shape[2]
        self.launch("running_max", n, self.xp.ascontiguousarray(x), out)
        return out


class _Maximum:
    """The module's ``maximum``, with ``accumulate`` along the rows of 3-D
    arrays done by a kernel (CuPy's ufuncs accumulate only for a few ops)."""

    def __init__(self, module: ArrayModule):
        self._module = module

    def __call__(self, *args, **kwargs):
        return self._module._xp.maximum(*args, **kwargs)

    def accumulate(self, x, axis=0, out=None):
        if x.ndim != 3 or axis != 1:
            return self._module._xp.maximum.accumulate(x, axis=axis, out=out)
        if out is not None and not out.flags.c_contiguous:
            out[...] = self._module._kernels.running_max(x)
            return out
        return self._module._kernels.running_max(x, out=out)


class ArrayModule:
    """The array module ``xp`` a device hands the walker and the sinks: NumPy's
    or CuPy's interface, with the running maximum along rows (what global max
    pooling reads) computed by the device's kernel."""

    def __init__(self, xp: Any, kernels: Kernels):
        self._xp = xp
        self._kernels = kernels
        self.maximum = _Maximum(self)

    def __getattr__(self, name: str):
        return getattr(self._xp, name)

    def __repr__(self) -> str:
        return f"<{self._xp.__name__} with device kernels>"
