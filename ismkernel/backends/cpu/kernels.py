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

import ctypes

import numba
import numpy as np

from ismkernel import config

__all__ = [
    "gather",
    "change",
    "change_sum",
    "col2im_ref",
    "conv_few_channels",
    "conv_per_tap",
    "GEMM",
    "relu",
    "pool_window",
    "lookup_add",
    "unchanged",
    "all_zero",
    "sum_rows",
]

_OPTS = dict(cache=True, nogil=True, fastmath=False)

#: Output channels below which a convolution's products are laid out rows
#: last (:func:`conv_few_channels`): too few channels to vectorise over.
FEW_CHANNELS = config.CPU_FEW_CHANNELS


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


@numba.njit(inline="always", **_OPTS)
def _finish_rows(
    out,
    m,
    o0,
    o1,
    o_first,
    s,
    ref,
    relu,
    epilogue,
):
    """Rows ``[o0, o1)`` of mutant ``m``'s window (``o_first`` its first row,
    ``s`` its sequence), holding the convolution's products alone, the change
    of its output from ``ref``: the reference added, then the ReLU, then the
    residual (``residual`` 1: its values on its own window, 2: its change
    there; its reference elsewhere), each if asked. With ``emit`` 1 the
    result's change from its reference is written to ``chg`` too, with
    ``emit`` 2 in place of the values; that change is formed from the changes
    of its parts, ``act(ref + out) - act(ref)`` (``out`` itself without an
    activation) plus the residual's, so no reference of the result is read
    (and a change that is exactly zero in every part stays exactly zero).
    With ``sums`` not empty, each row of that change is also added to
    ``sums[m]``, rows in order (the additions of :func:`sum_rows`).
    ``epilogue`` is what :func:`_epilogue` returns.

    Each case is one loop over channels, indexed through the arrays
    themselves: a flag tested inside the loop, an array chosen at run time,
    a row view (two atomic reference-count updates) or ``out`` passed on
    under a second name each kept the loop from vectorising (5x slower)."""
    residual, res, res_start, res_ref, emit, chg, sums = epilogue
    n_ch = out.shape[2]
    r_width = res.shape[1]
    summing = sums.shape[0] > 0
    for o in range(o0, o1):
        p = o_first + o
        q = p - res_start[m]
        inside = 0 <= q < r_width
        res_mode = residual if inside else 0  # outside: the change is zero
        if emit == 2:  # the change in place of the values
            if relu:
                if res_mode == 2:
                    for c in range(n_ch):
                        r = ref[s, p, c]
                        out[m, o, c] = (
                            _relu1(r + out[m, o, c]) - _relu1(r) + res[m, q, c]
                        )
                elif res_mode == 1:
                    for c in range(n_ch):
                        r = ref[s, p, c]
                        out[m, o, c] = (_relu1(r + out[m, o, c]) - _relu1(r)) + (
                            res[m, q, c] - res_ref[s, p, c]
                        )
                else:
                    for c in range(n_ch):
                        r = ref[s, p, c]
                        out[m, o, c] = _relu1(r + out[m, o, c]) - _relu1(r)
            elif res_mode == 2:
                for c in range(n_ch):
                    out[m, o, c] += res[m, q, c]
            elif res_mode == 1:
                for c in range(n_ch):
                    out[m, o, c] += res[m, q, c] - res_ref[s, p, c]
            if summing:
                for c in range(n_ch):
                    sums[m, c] += out[m, o, c]
            continue
        if emit == 1:  # the change, from the products before the values
            if relu:
                if res_mode == 2:
                    for c in range(n_ch):
                        r = ref[s, p, c]
                        chg[m, o, c] = (
                            _relu1(r + out[m, o, c]) - _relu1(r) + res[m, q, c]
                        )
                elif res_mode == 1:
                    for c in range(n_ch):
                        r = ref[s, p, c]
                        chg[m, o, c] = (_relu1(r + out[m, o, c]) - _relu1(r)) + (
                            res[m, q, c] - res_ref[s, p, c]
                        )
                else:
                    for c in range(n_ch):
                        r = ref[s, p, c]
                        chg[m, o, c] = _relu1(r + out[m, o, c]) - _relu1(r)
            elif res_mode == 2:
                for c in range(n_ch):
                    chg[m, o, c] = out[m, o, c] + res[m, q, c]
            elif res_mode == 1:
                for c in range(n_ch):
                    chg[m, o, c] = out[m, o, c] + (res[m, q, c] - res_ref[s, p, c])
            else:
                for c in range(n_ch):
                    chg[m, o, c] = out[m, o, c]
            if summing:
                for c in range(n_ch):
                    sums[m, c] += chg[m, o, c]
        # the values: reference plus products, activated, plus the residual
        if relu:
            for c in range(n_ch):
                out[m, o, c] = _relu1(ref[s, p, c] + out[m, o, c])
        else:
            for c in range(n_ch):
                out[m, o, c] = ref[s, p, c] + out[m, o, c]
        if residual == 1:
            if inside:
                for c in range(n_ch):
                    out[m, o, c] += res[m, q, c]
            else:
                for c in range(n_ch):
                    out[m, o, c] += res_ref[s, p, c]
        elif residual == 2:
            if inside:
                for c in range(n_ch):
                    out[m, o, c] += res_ref[s, p, c] + res[m, q, c]
            else:
                for c in range(n_ch):
                    out[m, o, c] += res_ref[s, p, c]


def _epilogue(out, out_start, residual, change, sums=None) -> tuple:
    """The kernels' epilogue arguments from ``residual=(tile, tile_start,
    ref, is_change)`` (``tile`` may be None: the reference only; with
    ``is_change`` it holds the residual's change, not its values),
    ``change``, the array for the result's change (may be ``out``: the
    change replaces the values), and ``sums``, zeros to add that change's
    rows to (needs ``change``), each optional."""
    empty = np.empty((len(out_start), 0, out.shape[2]), dtype=out.dtype)
    mode = 0
    res, res_start, res_ref = empty, out_start, empty
    if residual is not None:
        res, res_start, res_ref, is_change = residual
        mode = 2 if is_change else 1
        if res is None:
            res, res_start = empty, out_start
    emit, chg = 0, empty
    if change is not None:
        chg = change
        emit = 2 if chg is out else 1
    if sums is None:
        sums = np.empty((0, out.shape[2]), dtype=out.dtype)
    elif change is None:
        raise ValueError("sums of the change need the change (change=)")
    return mode, np.ascontiguousarray(res), res_start, res_ref, emit, chg, sums


@numba.njit(**_OPTS)
def _col2im_ref(
    out,
    ref,
    seq,
    out_start,
    taps,
    in_start,
    left,
    stride,
    dilation,
    relu,
    epilogue,
):
    n_mut, width, n_ch = out.shape
    n_in, n_taps = taps.shape[1], taps.shape[2]
    for m in range(n_mut):
        s = seq[m]
        for o in range(width):
            row = out_start[m] + o
            first = row * stride - left - in_start[m]
            if n_ch >= FEW_CHANNELS:  # vector over channels
                for c in range(n_ch):
                    out[m, o, c] = 0
                for k in range(n_taps):
                    j = first + k * dilation
                    if 0 <= j < n_in:
                        for c in range(n_ch):
                            out[m, o, c] += taps[m, j, k, c]
            else:  # few channels (a profile head): a register per channel
                for c in range(n_ch):
                    acc = type(out[m, o, c])(0)
                    for k in range(n_taps):
                        j = first + k * dilation
                        if 0 <= j < n_in:
                            acc += taps[m, j, k, c]
                    out[m, o, c] = acc
            _finish_rows(out, m, o, o + 1, out_start[m], s, ref, relu, epilogue)


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
    residual: tuple[np.ndarray | None, np.ndarray, np.ndarray, bool] | None = None,
    change: np.ndarray | None = None,
    sums: np.ndarray | None = None,
) -> np.ndarray:
    """The reference output window plus the per-tap products of the changed
    input rows (``taps[m, j, k]``: input row ``in_start[m] + j`` times tap
    ``k``, which lands on output row ``o`` with ``o * stride - left + k *
    dilation`` equal to that input row; a row's products summed first), in
    one pass that writes each output row once;
    then, while the row is in cache, the ReLU, a residual input and the
    result's change, each if asked (as in :func:`conv_per_tap`)."""
    _col2im_ref(
        out,
        ref,
        seq,
        out_start,
        taps,
        in_start,
        left,
        stride,
        dilation,
        relu,
        _epilogue(out, out_start, residual, change, sums),
    )
    return out


@numba.njit(**_OPTS)
def _conv_few_channels(
    gemm,
    out,
    ref,
    seq,
    out_start,
    delta,
    mats,
    in_start,
    j0,
    j1,
    left,
    dilation,
    relu,
    block,
    taps,
    acc,
):
    n_mut, width, n_ch = out.shape
    n_in, cin = delta.shape[1], delta.shape[2]
    n_taps = mats.shape[1] // n_ch
    args, scal = _gemm_args(out)
    for m in range(n_mut):
        # taps[k * n_ch + c, j - a]: changed input row j times tap k, for
        # channel c (the other rows' change is zero)
        a, b = j0[m], j1[m]
        # Both operands transposed (the kernel given as (channels, taps x
        # filters)) and in blocks of rows: OpenBLAS ran this shape 1.2-1.5x
        # faster than with the kernel pre-transposed, or in one call.
        for r0 in range(a, b, block):
            r1 = min(b, r0 + block)
            _gemm(
                gemm,
                args,
                scal,
                True,
                True,
                n_taps * n_ch,
                r1 - r0,
                cin,
                mats,
                0,
                n_taps * n_ch,
                delta,
                (m * n_in + r0) * cin,
                cin,
                False,
                taps,
                r0 - a,
                n_in,
            )
        s = seq[m]
        o0 = out_start[m]
        for c in range(n_ch):
            for o in range(width):
                acc[o] = ref[s, o0 + o, c]
            for k in range(n_taps):
                # output row o0 + o reads input window row o + base
                base = o0 - left + k * dilation - in_start[m]
                lo = max(0, a - base)
                hi = min(width, b - base)
                if hi <= lo:
                    continue
                # (views from index 0: no negative-index wrapping, so the
                # contiguous run vectorises)
                dst = acc[lo:hi]
                src = taps[k * n_ch + c, lo + base - a :]
                for i in range(hi - lo):
                    dst[i] += src[i]
            for o in range(width):
                out[m, o, c] = _relu1(acc[o]) if relu else acc[o]


def conv_few_channels(
    out: np.ndarray,
    ref: np.ndarray,
    seq: np.ndarray,
    out_start: np.ndarray,
    delta: np.ndarray,
    mats: np.ndarray,
    in_start: np.ndarray,
    rows: tuple[np.ndarray, np.ndarray],
    left: int,
    dilation: int,
    relu: bool = False,
    block: int = config.CPU_FEW_CHANNELS_BLOCK_ROWS,
) -> np.ndarray:
    """A stride-1 delta convolution with few output channels (a profile
    head), one mutant at a time: BLAS writes the products of every tap and
    channel with the changed input rows laid out rows last, ``(tap, channel,
    row)``, into a scratch that stays in cache, and each tap's contribution to
    a channel is then added to the reference row as one contiguous run.

    Parameters
    ----------
    out : ndarray (n_mut, width, n_filters), C-contiguous
    ref : ndarray (n_seqs, out_len, n_filters)
        The convolution's reference output.
    seq, out_start, in_start : ndarray of int64 (n_mut,)
    delta : ndarray (n_mut, in_width, n_channels), C-contiguous
        The change of the input on its window.
    mats : ndarray (n_channels, kernel_size * n_filters), C-contiguous
        Column ``k * n_filters + c`` is tap ``k`` of output channel ``c``.
    rows : (j0, j1), each ndarray of int64 (n_mut,)
        The input window rows ``[j0, j1)`` whose change may be non-zero
        (:func:`ismkernel.plan.planner.changed_rows`): only they are
        multiplied.
    left, dilation : int
        The convolution's left padding and dilation.
    block : int
        Input rows per GEMM.
    """
    n_in = delta.shape[1]
    taps = np.empty((mats.shape[1], n_in), dtype=out.dtype)
    acc = np.empty(out.shape[1], dtype=out.dtype)
    _conv_few_channels(
        GEMM[np.dtype(out.dtype)],
        out,
        ref,
        seq,
        out_start,
        delta,
        mats,
        in_start,
        rows[0],
        rows[1],
        left,
        dilation,
        relu,
        int(block),
        taps,
        acc,
    )
    return out


def _blas_gemm(name: str):
    """SciPy's Fortran-ABI BLAS ``?gemm`` as a ctypes function (every argument
    a pointer), for the kernels to call with the GIL released."""
    from numba.extending import get_cython_function_address

    addr = get_cython_function_address("scipy.linalg.cython_blas", name)
    return ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 13)(addr)


#: ``?gemm`` by dtype. Passed to the kernels as an argument, not read as a
#: global, so Numba can cache them (a ctypes global is not cacheable).
GEMM = {
    np.dtype(np.float32): _blas_gemm("sgemm"),
    np.dtype(np.float64): _blas_gemm("dgemm"),
}


@numba.njit(inline="always", **_OPTS)
def _gemm(
    gemm,
    args,
    scal,
    trans_a,
    trans_b,
    m,
    n,
    k,
    a,
    a_off,
    lda,
    b,
    b_off,
    ldb,
    beta,
    c,
    c_off,
    ldc,
):
    """Row-major ``c[m, n] = op(a) @ op(b) + beta * c`` (``beta`` 0 or 1) from
    flat element offsets and row strides; column-major BLAS computes
    ``c.T = op(b).T @ op(a).T``. ``args`` (int32, 8) takes the integer
    arguments and holds "N" and "T" in its last two entries; ``scal`` holds
    1 and 0 in the dtype of ``c``."""
    args[0], args[1], args[2] = n, m, k
    args[3], args[4], args[5] = ldb, lda, ldc
    base = args.ctypes.data
    one = scal.ctypes.data
    size = c.itemsize
    gemm(
        base + (28 if trans_b else 24),
        base + (28 if trans_a else 24),
        base,
        base + 4,
        base + 8,
        one,
        b.ctypes.data + size * b_off,
        base + 12,
        a.ctypes.data + size * a_off,
        base + 16,
        one + (0 if beta else size),
        c.ctypes.data + size * c_off,
        base + 20,
    )


@numba.njit(**_OPTS)
def _gemm_args(like):
    args = np.empty(8, dtype=np.int32)
    args[6], args[7] = 78, 84  # "N", "T"
    scal = np.zeros(2, dtype=like.dtype)
    scal[0] = 1
    return args, scal


@numba.njit(**_OPTS)
def _conv_per_tap(
    gemm,
    out,
    ref,
    seq,
    out_start,
    delta,
    kernel,
    first,
    j0,
    j1,
    block,
    relu,
    epilogue,
):
    n_mut, width, n_ch = out.shape
    n_taps, cin = kernel.shape[0], kernel.shape[1]
    w_in = delta.shape[1]
    args, scal = _gemm_args(out)
    # Blocks outer, mutants inner: a block's reference rows (where the
    # windows agree, as on wide layers) and the kernel stay in cache while
    # every mutant's rows stream through.
    for o0 in range(0, width, block):
        o1 = min(width, o0 + block)
        for m in range(n_mut):
            s = seq[m]
            o_first = out_start[m]
            for o in range(o0, o1):
                for c in range(n_ch):
                    out[m, o, c] = 0
            # Each tap's products of the changed input rows that land on
            # this block of rows, accumulated by BLAS while the block is hot.
            for k in range(n_taps):
                f = first[k, m]
                lo = max(j0[k, m], o0 - f)
                hi = min(j1[k, m], o1 - f)
                if hi > lo:
                    _gemm(
                        gemm,
                        args,
                        scal,
                        False,
                        False,
                        hi - lo,
                        n_ch,
                        cin,
                        delta,
                        (m * w_in + lo) * cin,
                        cin,
                        kernel,
                        k * cin * n_ch,
                        n_ch,
                        True,
                        out,
                        (m * width + f + lo) * n_ch,
                        n_ch,
                    )
            _finish_rows(out, m, o0, o1, o_first, s, ref, relu, epilogue)


def conv_per_tap(
    out: np.ndarray,
    ref: np.ndarray,
    seq: np.ndarray,
    out_start: np.ndarray,
    delta: np.ndarray,
    kernel: np.ndarray,
    rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    block: int,
    relu: bool = False,
    residual: tuple[np.ndarray | None, np.ndarray, np.ndarray, bool] | None = None,
    change: np.ndarray | None = None,
    sums: np.ndarray | None = None,
) -> np.ndarray:
    """A stride-1 delta convolution, fused: per block of output rows and
    mutant, each tap's products of the changed input rows (BLAS, accumulating
    into the block from zero while it is in cache), then in one pass over the
    block the reference rows added, the ReLU, the residual input and the
    result's change, each if asked (the change without an activation is the
    products themselves).

    Parameters
    ----------
    out : ndarray (n_mut, width, n_filters), C-contiguous
        Written: the convolution's output window (after ``relu``, plus the
        residual).
    ref : ndarray (n_seqs, out_len, n_filters)
        The convolution's reference output (before any activation).
    seq, out_start : ndarray of int64 (n_mut,)
    delta : ndarray (n_mut, in_width, n_channels), C-contiguous
        The change of the input on its window.
    kernel : ndarray (kernel_size, n_channels, n_filters), C-contiguous
    rows : (first, j0, j1), each ndarray of int64 (kernel_size, n_mut)
        From :func:`ismkernel.plan.planner.per_tap_rows`: input window row
        ``j`` in ``[j0, j1)`` times tap ``k`` lands on output row
        ``first + j``.
    block : int
        Output rows per block.
    residual : (tile, tile_start, ref, is_change), optional
        A node added after the ReLU: its values (with ``is_change``, its
        change) on its own window (``tile`` may be None: the reference only)
        and its reference elsewhere.
    change : ndarray (n_mut, width, n_filters), optional
        Also write the result's change from its reference on the window (for
        the next delta convolution to read): ``act(out) - act(ref)`` plus the
        residual's change, where the result's reference is ``act(ref)`` plus
        the residual's reference; with ``change`` being ``out``, the change
        replaces the values.
    sums : ndarray (n_mut, n_filters), zeros, optional
        Also add up that change over the window's rows, in order (as
        :func:`sum_rows`), for a global average or sum to read.
    """
    first, j0, j1 = rows
    _conv_per_tap(
        GEMM[np.dtype(out.dtype)],
        out,
        ref,
        seq,
        out_start,
        delta,
        kernel,
        first,
        j0,
        j1,
        int(block),
        relu,
        _epilogue(out, out_start, residual, change, sums),
    )
    return out


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
def _sum_rows(x, out):
    n_mut, width, n_ch = x.shape
    for m in range(n_mut):
        for c in range(n_ch):
            out[m, c] = 0
        for j in range(width):
            for c in range(n_ch):
                out[m, c] += x[m, j, c]


def sum_rows(x: np.ndarray) -> np.ndarray:
    """Per mutant and channel, ``x`` summed over its rows in order (the order
    :func:`change_sum` adds the same differences in)."""
    out = np.empty((x.shape[0], x.shape[2]), dtype=x.dtype)
    _sum_rows(np.ascontiguousarray(x), out)
    return out


@numba.njit(**_OPTS)
def _all_zero(x, out):
    n_mut, width, n_ch = x.shape
    for m in range(n_mut):
        zero = True
        for j in range(width):
            # a whole row at a time, without a branch: the loop vectorises
            nonzero = False
            for c in range(n_ch):
                nonzero |= x[m, j, c] != 0
            if nonzero:
                zero = False
                break
        out[m] = zero


def all_zero(x: np.ndarray) -> np.ndarray:
    """Per mutant, whether its change is zero on every row: :func:`unchanged`
    for a node kept as its change (``a - b == 0`` exactly when ``a == b``;
    a NaN or infinite difference counts as a change)."""
    out = np.empty(x.shape[0], dtype=np.bool_)
    _all_zero(np.ascontiguousarray(x), out)
    return out


@numba.njit(**_OPTS)
def _unchanged(tile, tile_start, ref, seq, out):
    n_mut, width, n_ch = tile.shape
    for m in range(n_mut):
        s = seq[m]
        t0 = tile_start[m]
        same = True
        for j in range(width):
            differs = False
            for c in range(n_ch):
                differs |= tile[m, j, c] != ref[s, t0 + j, c]
            if differs:
                same = False
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
