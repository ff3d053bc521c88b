"""Numba-CUDA kernels of the cuda executor: the non-GEMM work of a chunk.

They do on the device what :mod:`ismkernel.backends.cpu.kernels` does on the
host, with the same arguments and the same results, and accept any array
with ``__cuda_array_interface__`` (CuPy arrays) on a GPU, or NumPy arrays
under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which is how CI tests
them.

Each kernel gives one thread one output element, ``(mutant, row, channel)``
flattened, so every output is written by exactly one thread: no atomics, and
results do not depend on the launch shape. Loops over kernel taps and pooling
windows run in the order the CPU kernels use, so float32 sums round alike.
"""

from __future__ import annotations

import math

from numba import cuda

__all__ = [
    "THREADS",
    "launch_gather",
    "launch_pool_window",
    "launch_lookup_add",
    "launch_unchanged",
]

#: Threads per block. Grids are rounded up; the last block is partial.
THREADS = 128


def _grid(n: int) -> tuple[int, int]:
    return max(1, math.ceil(n / THREADS)), THREADS


@cuda.jit(device=True)
def _element(i, width, n_ch):
    """(mutant, row, channel) of flat thread index ``i``."""
    return i // (n_ch * width), (i // n_ch) % width, i % n_ch


@cuda.jit
def _gather(tile, tile_start, ref, seq, start, out, pad):
    i = cuda.grid(1)
    n_mut, width, n_ch = out.shape
    if i >= n_mut * width * n_ch:
        return
    m, j, c = _element(i, width, n_ch)
    p = start[m] + j
    t0 = tile_start[m]
    if t0 <= p < t0 + tile.shape[1]:
        out[m, j, c] = tile[m, p - t0, c]
    elif 0 <= p < ref.shape[1]:
        out[m, j, c] = ref[seq[m], p, c]
    else:
        out[m, j, c] = pad


def launch_gather(tile, tile_start, ref, seq, start, out, pad=0.0):
    """``out[m, j]`` = row ``start[m] + j`` of mutant ``m``: from its tile
    where the tile covers it, else from its sequence's reference, else
    ``pad``. (With no tile, pass a tile of width 0.)"""
    blocks, threads = _grid(out.size)
    _gather[blocks, threads](tile, tile_start, ref, seq, start, out, pad)


@cuda.jit
def _pool_window(
    tile, tile_start, ref, seq, out_start, out, pool, stride, left, is_max
):
    i = cuda.grid(1)
    n_mut, width, n_ch = out.shape
    if i >= n_mut * width * n_ch:
        return
    m, j, c = _element(i, width, n_ch)
    first = (out_start[m] + j) * stride - left
    t0 = tile_start[m]
    count = 0
    # Accumulate in ``out`` itself, in its dtype, as the CPU kernel does.
    for t in range(pool):
        p = first + t
        if p < 0 or p >= ref.shape[1]:
            continue
        if t0 <= p < t0 + tile.shape[1]:
            v = tile[m, p - t0, c]
        else:
            v = ref[seq[m], p, c]
        if count == 0:
            out[m, j, c] = v
        elif is_max:
            if v > out[m, j, c]:
                out[m, j, c] = v
        else:
            out[m, j, c] += v
        count += 1
    if not is_max:
        out[m, j, c] /= count


def launch_pool_window(
    tile, tile_start, ref, seq, out_start, out, pool, stride, left, is_max
):
    """Max or average pooling of each mutant's rows onto its output window;
    rows outside the input never win a maximum and are not counted."""
    blocks, threads = _grid(out.size)
    _pool_window[blocks, threads](
        tile, tile_start, ref, seq, out_start, out, pool, stride, left, is_max
    )


@cuda.jit
def _lookup_add(
    out,
    ref_out,
    seq,
    alt_taps,
    alt,
    ref_taps,
    pair,
    pos,
    out_start,
    left,
    stride,
    dilation,
):
    i = cuda.grid(1)
    n_mut, width, n_ch = out.shape
    if i >= n_mut * width * n_ch:
        return
    m, o, c = _element(i, width, n_ch)
    acc = ref_out[seq[m], out_start[m] + o, c]
    for k in range(alt_taps.shape[1]):
        num = pos[m] + left - k * dilation
        if num >= 0 and num % stride == 0 and num // stride - out_start[m] == o:
            acc += alt_taps[alt[m], k, c] - ref_taps[pair[m], k, c]
    out[m, o, c] = acc


def launch_lookup_add(
    out,
    ref_out,
    seq,
    alt_taps,
    alt,
    ref_taps,
    pair,
    pos,
    out_start,
    left,
    stride,
    dilation,
):
    """The first convolution of a mutant: its reference output window plus,
    on each tap's row, the taps of the new row minus those of the old."""
    blocks, threads = _grid(out.size)
    _lookup_add[blocks, threads](
        out,
        ref_out,
        seq,
        alt_taps,
        alt,
        ref_taps,
        pair,
        pos,
        out_start,
        left,
        stride,
        dilation,
    )


@cuda.jit
def _unchanged(tile, tile_start, ref, seq, same):
    i = cuda.grid(1)
    n_mut, width, n_ch = tile.shape
    if i >= n_mut * width * n_ch:
        return
    m, j, c = _element(i, width, n_ch)
    if tile[m, j, c] != ref[seq[m], tile_start[m] + j, c]:
        same[m] = 0  # every writer writes 0: no race


def launch_unchanged(tile, tile_start, ref, seq, same):
    """``same[m]`` (int8, set to 1 by the caller) becomes 0 where mutant
    ``m``'s window differs from the reference anywhere."""
    blocks, threads = _grid(tile.size)
    _unchanged[blocks, threads](tile, tile_start, ref, seq, same)
