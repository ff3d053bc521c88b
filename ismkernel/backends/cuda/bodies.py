"""Per-element bodies of the cuda device's kernels, written once.

Each body computes one element of a kernel's output (``i``, its flat index,
is the last argument) and is a :func:`numba.core.extending.register_jitable`
function, so the same source runs three ways (:mod:`.grid`): inside a
``@cuda.jit`` kernel on a GPU, as plain Python under the CUDA simulator, and
inside an ``@njit`` loop over the grid on the host (the ``cuda-emulated``
device). Every output element is written by exactly one thread: no atomics,
and the results do not depend on the launch shape.

The arithmetic is that of :mod:`ismkernel.backends.cpu.kernels`, operation
for operation and in its dtype, so the emulated device equals the cpu device
bit for bit under the same tactics. Constants are made in the data's own
type (``type(v)(0)``): in compiled code a float32 times an int is float64,
which the simulator would hide and the GPU would pay for.
"""

from __future__ import annotations

from numba.core.extending import register_jitable

__all__ = [
    "relu1",
    "gather",
    "change",
    "change_sum",
    "sum_rows",
    "all_zero",
    "unchanged",
    "relu",
    "pool_window",
    "lookup_add",
    "col2im_element",
    "col2im_rows",
    "col2im_columns",
    "running_max",
]


@register_jitable
def relu1(v):
    # max(v, 0) with NaN kept, as np.maximum, and the same expression as the
    # cpu kernels' (so -0.0 becomes +0.0 alike).
    z = type(v)(0)
    return (z if v < z else v) + z


@register_jitable
def gather(tile, tile_start, ref, seq, start, pad, add, out, i):
    """``out[m, j, c]``: row ``start[m] + j`` of mutant ``m`` from its tile
    where the tile covers it, else its sequence's reference, else ``pad``
    (with ``add``, added to ``out``)."""
    n_mut, width, n_ch = out.shape
    m = i // (width * n_ch)
    j = (i // n_ch) % width
    c = i % n_ch
    p = start[m] + j
    t0 = tile_start[m]
    if t0 <= p < t0 + tile.shape[1]:
        v = tile[m, p - t0, c]
    elif 0 <= p < ref.shape[1]:
        v = ref[seq[m], p, c]
    else:
        v = pad
    if add:
        out[m, j, c] += v
    else:
        out[m, j, c] = v


@register_jitable
def change(tile, tile_start, ref, seq, out, i):
    """``out[m, j, c]``: the tile minus the reference (zero outside the
    node's rows) on the tile's window."""
    n_mut, width, n_ch = tile.shape
    m = i // (width * n_ch)
    j = (i // n_ch) % width
    c = i % n_ch
    p = tile_start[m] + j
    if 0 <= p < ref.shape[1]:
        out[m, j, c] = tile[m, j, c] - ref[seq[m], p, c]
    else:
        out[m, j, c] = tile[m, j, c]


@register_jitable
def change_sum(tile, tile_start, ref, seq, out, i):
    """``out[m, c]``: the change summed over the window's rows, in order."""
    n_mut, width, n_ch = tile.shape
    m = i // n_ch
    c = i % n_ch
    s = seq[m]
    acc = out[m, c]
    acc = type(acc)(0)
    for j in range(width):
        p = tile_start[m] + j
        if 0 <= p < ref.shape[1]:
            acc += tile[m, j, c] - ref[s, p, c]
        else:
            acc += tile[m, j, c]
    out[m, c] = acc


@register_jitable
def sum_rows(x, out, i):
    """``out[m, c]``: ``x[m, :, c]`` summed in row order."""
    n_mut, width, n_ch = x.shape
    m = i // n_ch
    c = i % n_ch
    acc = out[m, c]
    acc = type(acc)(0)
    for j in range(width):
        acc += x[m, j, c]
    out[m, c] = acc


@register_jitable
def all_zero(x, out, i):
    """``out[m]``: mutant ``m``'s change is zero on every row (a NaN counts
    as a change)."""
    n_mut, width, n_ch = x.shape
    zero = True
    for j in range(width):
        for c in range(n_ch):
            if x[i, j, c] != 0:
                zero = False
        if not zero:
            break
    out[i] = zero


@register_jitable
def unchanged(tile, tile_start, ref, seq, out, i):
    """``out[m]``: mutant ``m``'s window equals the reference exactly."""
    n_mut, width, n_ch = tile.shape
    s = seq[i]
    t0 = tile_start[i]
    same = True
    for j in range(width):
        for c in range(n_ch):
            if tile[i, j, c] != ref[s, t0 + j, c]:
                same = False
        if not same:
            break
    out[i] = same


@register_jitable
def relu(x, i):
    """``max(x, 0)`` in place, on a flat array."""
    x[i] = relu1(x[i])


@register_jitable
def pool_window(
    tile, tile_start, ref, seq, out_start, pool, stride, left, is_max, out, i
):
    """``out[m, j, c]``: max or average pooling of mutant ``m``'s rows (its
    tile where it covers them, else the reference); rows outside the input
    never win a maximum and are not counted in a mean."""
    n_mut, width, n_ch = out.shape
    m = i // (width * n_ch)
    j = (i // n_ch) % width
    c = i % n_ch
    s = seq[m]
    t0 = tile_start[m]
    length = ref.shape[1]
    first = (out_start[m] + j) * stride - left
    acc = out[m, j, c]
    zero = type(acc)(0)
    count = 0
    for t in range(pool):
        p = first + t
        if p < 0 or p >= length:
            continue
        if t0 <= p < t0 + tile.shape[1]:
            v = tile[m, p - t0, c]
        else:
            v = ref[s, p, c]
        if count == 0:
            acc = v
        elif is_max:
            acc = (v if v > acc else acc) + zero
        else:
            acc += v
        count += 1
    if not is_max:
        # float32 divided by float32: the cpu kernel divides in float64 and
        # rounds to float32, which for a division gives the same bits
        acc = acc / type(acc)(count)
    out[m, j, c] = acc


@register_jitable
def lookup_add(
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
    out,
    i,
):
    """``out[m, o, c]``: the first convolution's reference output plus, for
    each tap landing on row ``o``, the tap of the new row minus that of the
    old one (taps in order)."""
    n_mut, width, n_ch = out.shape
    m = i // (width * n_ch)
    o = (i // n_ch) % width
    c = i % n_ch
    o0 = out_start[m]
    acc = ref_out[seq[m], o0 + o, c]
    a = alt[m]
    r = pair[m]
    for k in range(alt_taps.shape[1]):
        num = pos[m] + left - k * dilation
        if num < 0 or num % stride:
            continue
        if num // stride - o0 == o:
            acc += alt_taps[a, k, c] - ref_taps[r, k, c]
    out[m, o, c] = acc


@register_jitable
def col2im_element(
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
    residual,
    res,
    res_start,
    res_ref,
    emit,
    chg,
    m,
    o,
    c,
):
    """Row ``o``, channel ``c`` of mutant ``m``'s output window: the products
    landing on it summed from zero in tap order, then the epilogue of the
    cpu kernels' ``_finish_rows``: with ``emit`` 1 the result's change is
    written to ``chg``, with ``emit`` 2 in place of the values; the values
    are reference plus products, the ReLU if asked, plus the residual
    (``residual`` 1: its values on its window, 2: its change there; its
    reference elsewhere). Returns the change (zero without ``emit``)."""
    n_in = taps.shape[1]
    s = seq[m]
    p = out_start[m] + o
    first = p * stride - left - in_start[m]
    r = ref[s, p, c]
    zero = type(r)(0)
    acc = zero
    for k in range(taps.shape[2]):
        j = first + k * dilation
        if 0 <= j < n_in:
            acc += taps[m, j, k, c]
    q = p - res_start[m]
    inside = 0 <= q < res.shape[1]
    mode = residual if inside else 0  # outside its window the change is zero
    d = zero
    if emit != 0:
        if relu:
            if mode == 2:
                d = relu1(r + acc) - relu1(r) + res[m, q, c]
            elif mode == 1:
                d = (relu1(r + acc) - relu1(r)) + (res[m, q, c] - res_ref[s, p, c])
            else:
                d = relu1(r + acc) - relu1(r)
        elif mode == 2:
            d = acc + res[m, q, c]
        elif mode == 1:
            d = acc + (res[m, q, c] - res_ref[s, p, c])
        else:
            d = acc
        if emit == 2:
            out[m, o, c] = d
            return d
        chg[m, o, c] = d
    v = relu1(r + acc) if relu else r + acc
    if residual == 1:
        if inside:
            v += res[m, q, c]
        else:
            v += res_ref[s, p, c]
    elif residual == 2:
        if inside:
            v += res_ref[s, p, c] + res[m, q, c]
        else:
            v += res_ref[s, p, c]
    out[m, o, c] = v
    return d


@register_jitable
def col2im_rows(
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
    residual,
    res,
    res_start,
    res_ref,
    emit,
    chg,
    i,
):
    """The fused col2im, one thread per output element."""
    n_mut, width, n_ch = out.shape
    col2im_element(
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
        residual,
        res,
        res_start,
        res_ref,
        emit,
        chg,
        i // (width * n_ch),
        (i // n_ch) % width,
        i % n_ch,
    )


@register_jitable
def col2im_columns(
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
    residual,
    res,
    res_start,
    res_ref,
    emit,
    chg,
    sums,
    i,
):
    """The fused col2im with the change's row sums: one thread per mutant and
    channel walks the rows in order, adding each row's change to
    ``sums[m, c]`` as it is written (the additions of :func:`sum_rows`)."""
    n_mut, width, n_ch = out.shape
    m = i // n_ch
    c = i % n_ch
    acc = sums[m, c]
    for o in range(width):
        acc += col2im_element(
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
            residual,
            res,
            res_start,
            res_ref,
            emit,
            chg,
            m,
            o,
            c,
        )
    sums[m, c] = acc


@register_jitable
def running_max(x, out, i):
    """``out[n, :, c]``: the running maximum of ``x[n, :, c]`` along its rows
    (``np.maximum.accumulate``: a NaN, once met, stays)."""
    n_seqs, length, n_ch = x.shape
    n = i // n_ch
    c = i % n_ch
    if length == 0:
        return
    acc = x[n, 0, c]
    out[n, 0, c] = acc
    for j in range(1, length):
        v = x[n, j, c]
        if v > acc or v != v:
            acc = v
        out[n, j, c] = acc
