"""Numba kernels of the CPU executor: the non-GEMM work.

The kernels are serial and release the GIL: the executor runs one chunk of
mutants per thread, each thread with its own kernels and single-threaded BLAS
calls, so no two thread pools compete for the cores. Every kernel takes
per-mutant index arrays (int64) and writes into arrays the caller allocates,
so it compiles once per dtype. A *window* of a node for mutant ``m`` is rows
``[start[m], start[m] + width)`` of its output; a *tile* holds the mutant's
values on its window, and the reference (per sequence) holds every row.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "gather",
    "change",
    "change_sum",
    "col2im_add",
    "col2im_ref",
    "col2im_ref_t",
    "add_parts",
    "relu",
    "pool_window",
    "lookup_add",
    "unchanged",
]

_OPTS = dict(cache=True, nogil=True, fastmath=False)

#: Output channels below which a convolution's products are laid out rows
#: last (:func:`col2im_ref_t`): too few channels to vectorise over.
FEW_CHANNELS = 8


@numba.njit(inline="always", **_OPTS)
def _relu1(v):
    # max(v, 0) with NaN kept, as np.maximum. The "+ 0" makes the store
    # unconditional: a store under a condition compiles to a masked vector
    # store, which some CPUs (AMD Zen) run several times slower.
    z = type(v)(0)
    return (z if v < z else v) + z


@numba.njit(**_OPTS)
def _relu(flat):
    for i in range(flat.size):
        flat[i] = _relu1(flat[i])


def relu(x: np.ndarray) -> np.ndarray:
    """``np.maximum(x, 0, out=x)`` for a contiguous ``x``, at the speed of a copy."""
    if x.flags.c_contiguous:
        _relu(x.reshape(-1))
    else:
        np.maximum(x, x.dtype.type(0), out=x)
    return x


@numba.njit(**_OPTS)
def _gather(tile, tile_start, ref, seq, start, out, pad, add):
    n_mut, width, n_ch = out.shape
    t_width = tile.shape[1]
    length = ref.shape[1]
    for m in range(n_mut):
        s = seq[m]
        t0 = tile_start[m]
        for j in range(width):
            p = start[m] + j
            if t0 <= p < t0 + t_width:
                row = tile[m, p - t0]
            elif 0 <= p < length:
                row = ref[s, p]
            else:
                for c in range(n_ch):
                    out[m, j, c] = out[m, j, c] + pad if add else pad
                continue
            if add:
                for c in range(n_ch):
                    out[m, j, c] += row[c]
            else:
                for c in range(n_ch):
                    out[m, j, c] = row[c]


def gather(
    tile: np.ndarray | None,
    tile_start: np.ndarray | None,
    ref: np.ndarray,
    seq: np.ndarray,
    start: np.ndarray,
    width: int,
    pad: float = 0.0,
    out: np.ndarray | None = None,
    add: bool = False,
) -> np.ndarray:
    """Rows ``[start[m], start[m] + width)`` of each mutant's values (with
    ``add``, added to ``out`` instead of written: no gathered array).

    Parameters
    ----------
    tile : ndarray (n_mut, tile_width, n_ch) or None
        The mutants' values on their windows (None: the reference only).
    tile_start : ndarray of int64 (n_mut,) or None
    ref : ndarray (n_seqs, length, n_ch)
        Reference values of the node, per sequence.
    seq : ndarray of int64 (n_mut,)
        Each mutant's row in ``ref``.
    start : ndarray of int64 (n_mut,)
    width : int
    pad : float
        Value of rows outside ``[0, length)``.
    out : ndarray (n_mut, width, n_ch), optional
        Where to write.
    """
    n_mut = len(seq)
    if out is None:
        out = np.empty((n_mut, width, ref.shape[2]), dtype=ref.dtype)
    if tile is None:
        tile = np.empty((n_mut, 0, ref.shape[2]), dtype=ref.dtype)
        tile_start = start
    _gather(
        np.ascontiguousarray(tile),
        tile_start,
        ref,
        seq,
        start,
        out,
        ref.dtype.type(pad),
        add,
    )
    return out


@numba.njit(**_OPTS)
def _change(tile, tile_start, ref, seq, out):
    n_mut, width, n_ch = tile.shape
    length = ref.shape[1]
    for m in range(n_mut):
        s = seq[m]
        for j in range(width):
            p = tile_start[m] + j
            if 0 <= p < length:
                for c in range(n_ch):
                    out[m, j, c] = tile[m, j, c] - ref[s, p, c]
            else:
                for c in range(n_ch):
                    out[m, j, c] = tile[m, j, c]


@numba.njit(**_OPTS)
def _change_sum(tile, tile_start, ref, seq, out):
    n_mut, width, n_ch = tile.shape
    length = ref.shape[1]
    for m in range(n_mut):
        s = seq[m]
        for c in range(n_ch):
            out[m, c] = 0
        for j in range(width):
            p = tile_start[m] + j
            if 0 <= p < length:
                for c in range(n_ch):
                    out[m, c] += tile[m, j, c] - ref[s, p, c]
            else:
                for c in range(n_ch):
                    out[m, c] += tile[m, j, c]


def change(
    tile: np.ndarray,
    tile_start: np.ndarray,
    ref: np.ndarray,
    seq: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Each mutant's values minus the reference, on the tile's own window
    (the reference counts as zero outside the node's rows), in one pass."""
    if out is None:
        out = np.empty(tile.shape, dtype=tile.dtype)
    _change(np.ascontiguousarray(tile), tile_start, ref, seq, out)
    return out


def change_sum(
    tile: np.ndarray, tile_start: np.ndarray, ref: np.ndarray, seq: np.ndarray
) -> np.ndarray:
    """Per mutant and channel, the change from the reference summed over the
    window's rows, with no array of changes in between."""
    out = np.empty((tile.shape[0], tile.shape[2]), dtype=tile.dtype)
    _change_sum(np.ascontiguousarray(tile), tile_start, ref, seq, out)
    return out


@numba.njit(**_OPTS)
def _col2im_ref(out, ref, seq, out_start, taps, in_start, left, stride, dilation, relu):
    n_mut, width, n_ch = out.shape
    n_in, n_taps = taps.shape[1], taps.shape[2]
    for m in range(n_mut):
        s = seq[m]
        for o in range(width):
            row = out_start[m] + o
            first = row * stride - left - in_start[m]
            if n_ch >= FEW_CHANNELS:  # vector over channels
                for c in range(n_ch):
                    out[m, o, c] = ref[s, row, c]
                for k in range(n_taps):
                    j = first + k * dilation
                    if 0 <= j < n_in:
                        for c in range(n_ch):
                            out[m, o, c] += taps[m, j, k, c]
            else:  # few channels (a profile head): a register per channel
                for c in range(n_ch):
                    acc = ref[s, row, c]
                    for k in range(n_taps):
                        j = first + k * dilation
                        if 0 <= j < n_in:
                            acc += taps[m, j, k, c]
                    out[m, o, c] = acc
            if relu:
                for c in range(n_ch):
                    out[m, o, c] = _relu1(out[m, o, c])


def col2im_ref(
    out: np.ndarray,
    ref: np.ndarray,
    seq: np.ndarray,
    out_start: np.ndarray,
    taps: np.ndarray,
    in_start: np.ndarray,
    left: int,
    stride: int,
    dilation: int,
    relu: bool = False,
) -> np.ndarray:
    """The reference output window plus the per-tap products of the changed
    input rows: :func:`gather` of the reference then :func:`col2im_add`, in
    one pass that writes each output row once (same sums, same order); with
    ``relu``, each row then clamped at zero while in cache."""
    _col2im_ref(out, ref, seq, out_start, taps, in_start, left, stride, dilation, relu)
    return out


@numba.njit(**_OPTS)
def _col2im_ref_t(
    out, ref, seq, out_start, taps, in_start, left, stride, dilation, relu, acc
):
    n_mut, width, n_ch = out.shape
    n_taps, n_in = taps.shape[1], taps.shape[3]
    for m in range(n_mut):
        s = seq[m]
        o0 = out_start[m]
        for c in range(n_ch):
            for o in range(width):
                acc[o] = ref[s, o0 + o, c]
            for k in range(n_taps):
                # input row j = o * stride + base of output row o0 + o
                base = o0 * stride - left + k * dilation - in_start[m]
                lo = max(0, -(base // stride))
                hi = min(width, (n_in - base + stride - 1) // stride)
                if hi <= lo:
                    continue
                # (views from index 0: no negative-index wrapping, so the
                # contiguous stride-1 run vectorises)
                dst = acc[lo:hi]
                src = taps[m, k, c, lo * stride + base :]
                if stride == 1:
                    for i in range(hi - lo):
                        dst[i] += src[i]
                else:
                    for i in range(hi - lo):
                        dst[i] += src[i * stride]
            for o in range(width):
                out[m, o, c] = _relu1(acc[o]) if relu else acc[o]


def col2im_ref_t(
    out: np.ndarray,
    ref: np.ndarray,
    seq: np.ndarray,
    out_start: np.ndarray,
    taps: np.ndarray,
    in_start: np.ndarray,
    left: int,
    stride: int,
    dilation: int,
    relu: bool = False,
) -> np.ndarray:
    """:func:`col2im_ref` with the products laid out ``taps[m, k, c, j]``
    (input rows last), for convolutions with few output channels: each tap's
    contribution to a channel is then one contiguous run of rows, added in
    the same order as :func:`col2im_ref` adds them."""
    acc = np.empty(out.shape[1], dtype=out.dtype)
    _col2im_ref_t(
        out, ref, seq, out_start, taps, in_start, left, stride, dilation, relu, acc
    )
    return out


@numba.njit(**_OPTS)
def _add_parts(out, parts, offset, count, relu):
    width, n_ch = out.shape
    for o in range(width):
        for k in range(parts.shape[0]):
            i = o - offset[k]
            if 0 <= i < count[k]:
                for c in range(n_ch):
                    out[o, c] += parts[k, i, c]
        if relu:
            for c in range(n_ch):
                out[o, c] = _relu1(out[o, c])


def add_parts(
    out: np.ndarray,
    parts: np.ndarray,
    offset: np.ndarray,
    count: np.ndarray,
    relu: bool = False,
) -> np.ndarray:
    """``out[offset[k] + i] += parts[k, i]`` for ``i < count[k]``, for each
    part ``k`` in order, then with ``relu`` each row clamped at zero: the
    per-tap products of one mutant's window, in one pass over its rows."""
    _add_parts(out, parts, offset, count, relu)
    return out


@numba.njit(**_OPTS)
def _col2im_add(out, taps, in_start, out_start, left, stride, dilation):
    n_mut, width, n_ch = out.shape
    n_in, n_taps = taps.shape[1], taps.shape[2]
    for m in range(n_mut):
        o0 = out_start[m]
        for j in range(n_in):
            p = in_start[m] + j
            for k in range(n_taps):
                num = p + left - k * dilation
                if num < 0 or num % stride:
                    continue
                o = num // stride - o0
                if 0 <= o < width:
                    for c in range(n_ch):
                        out[m, o, c] += taps[m, j, k, c]


def col2im_add(
    out: np.ndarray,
    taps: np.ndarray,
    in_start: np.ndarray,
    out_start: np.ndarray,
    left: int,
    stride: int,
    dilation: int,
) -> None:
    """Add the per-tap products of changed input rows to the output windows.

    ``taps[m, j, k]`` is input row ``in_start[m] + j`` times kernel tap ``k``;
    it lands on output row ``o`` with ``o * stride - left + k * dilation`` equal
    to that input row, when ``o`` lies in the mutant's output window.
    """
    _col2im_add(out, taps, in_start, out_start, left, stride, dilation)


@numba.njit(**_OPTS)
def _pool_window(
    tile, tile_start, ref, seq, out_start, out, pool, stride, left, is_max
):
    n_mut, width, n_ch = out.shape
    t_width = tile.shape[1]
    length = ref.shape[1]
    zero = out.dtype.type(0)
    for m in range(n_mut):
        s = seq[m]
        t0 = tile_start[m]
        for j in range(width):
            first = (out_start[m] + j) * stride - left
            count = 0
            for t in range(pool):
                p = first + t
                if p < 0 or p >= length:
                    continue
                if t0 <= p < t0 + t_width:
                    row = tile[m, p - t0]
                else:
                    row = ref[s, p]
                if count == 0:
                    for c in range(n_ch):
                        out[m, j, c] = row[c]
                elif is_max:  # "+ 0": an unconditional store, as in _relu1
                    for c in range(n_ch):
                        v, o = row[c], out[m, j, c]
                        out[m, j, c] = (v if v > o else o) + zero
                else:
                    for c in range(n_ch):
                        out[m, j, c] += row[c]
                count += 1
            if not is_max:
                for c in range(n_ch):
                    out[m, j, c] /= count


def pool_window(
    tile: np.ndarray,
    tile_start: np.ndarray,
    ref: np.ndarray,
    seq: np.ndarray,
    out_start: np.ndarray,
    width: int,
    pool: int,
    stride: int,
    left: int,
    is_max: bool,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Max or average pooling of each mutant's input on its output window.

    Rows outside the input are skipped (TensorFlow's ``same`` rule: never the
    maximum, not counted in the mean).
    """
    if out is None:
        out = np.empty((len(seq), width, ref.shape[2]), dtype=ref.dtype)
    _pool_window(
        np.ascontiguousarray(tile),
        tile_start,
        ref,
        seq,
        out_start,
        out,
        pool,
        stride,
        left,
        is_max,
    )
    return out


@numba.njit(**_OPTS)
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
    n_mut, width, n_ch = out.shape
    n_taps = alt_taps.shape[1]
    for m in range(n_mut):
        s = seq[m]
        o0 = out_start[m]
        for j in range(width):
            for c in range(n_ch):
                out[m, j, c] = ref_out[s, o0 + j, c]
        for k in range(n_taps):
            num = pos[m] + left - k * dilation
            if num < 0 or num % stride:
                continue
            o = num // stride - o0
            if 0 <= o < width:
                a = alt[m]
                r = pair[m]
                for c in range(n_ch):
                    out[m, o, c] += alt_taps[a, k, c] - ref_taps[r, k, c]


def lookup_add(
    ref_out: np.ndarray,
    seq: np.ndarray,
    alt_taps: np.ndarray,
    alt: np.ndarray,
    ref_taps: np.ndarray,
    pair: np.ndarray,
    pos: np.ndarray,
    out_start: np.ndarray,
    width: int,
    left: int,
    stride: int,
    dilation: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """First convolution on a mutated row: the reference output window plus,
    on each tap's output row, ``alt_taps[alt[m], k] - ref_taps[pair[m], k]``
    (the kernel taps of the new row minus those of the old one)."""
    if out is None:
        out = np.empty((len(seq), width, ref_out.shape[2]), dtype=ref_out.dtype)
    _lookup_add(
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
    return out


@numba.njit(**_OPTS)
def _unchanged(tile, tile_start, ref, seq, out):
    n_mut, width, n_ch = tile.shape
    for m in range(n_mut):
        s = seq[m]
        t0 = tile_start[m]
        same = True
        for j in range(width):
            for c in range(n_ch):
                if tile[m, j, c] != ref[s, t0 + j, c]:
                    same = False
                    break
            if not same:
                break
        out[m] = same


def unchanged(
    tile: np.ndarray, tile_start: np.ndarray, ref: np.ndarray, seq: np.ndarray
) -> np.ndarray:
    """Per mutant, whether its window equals the reference exactly (stops at
    the first difference, so changed mutants cost almost nothing)."""
    out = np.empty(len(seq), dtype=np.bool_)
    _unchanged(np.ascontiguousarray(tile), tile_start, ref, seq, out)
    return out
