"""Analytic interval rules: which output positions a mutation can change.

An interval is a pair of int64 arrays ``(lo, hi)`` over the mutated positions:
for the mutation at position ``positions[j]``, the half-open range
``[lo[j], hi[j])`` of a node's output rows it can change. ``lo >= hi`` means
nothing changes. Everything here is pure index arithmetic on the padding rules
of :mod:`ismkernel.ir.shapes`; no data is touched.
"""

from __future__ import annotations

import numpy as np

from ismkernel.ir import conv_padding, pool_padding
from ismkernel.ir import nodes as ops

__all__ = [
    "window_forward",
    "window_backward",
    "forward_interval",
    "backward_need",
    "hull",
    "EMPTY",
]

#: The empty need: no position of a node is read.
EMPTY = (0, 0)


def _ceil_div(a: np.ndarray, b: int) -> np.ndarray:
    return -(-a // b)


def window_forward(
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    kernel_size: int,
    stride: int,
    dilation: int,
    left: int,
    out_len: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Output rows of a sliding window op (convolution, pooling) that read a
    row in ``[lo, hi)``.

    Output row ``o`` reads input rows ``o * stride - left + k * dilation`` for
    ``k < kernel_size``. The result is the hull of the rows with at least one
    tap inside the interval, so it is tight even where a dilated kernel's taps
    step over a narrow interval.
    """
    out_lo = np.full(lo.shape, np.iinfo(np.int64).max, dtype=np.int64)
    out_hi = np.full(lo.shape, np.iinfo(np.int64).min, dtype=np.int64)
    for k in range(kernel_size):
        shift = left - k * dilation
        first = np.maximum(_ceil_div(lo + shift, stride), 0)
        last = np.minimum((hi - 1 + shift) // stride, out_len - 1)  # inclusive
        ok = (first <= last) & (lo < hi)
        out_lo = np.where(ok, np.minimum(out_lo, first), out_lo)
        out_hi = np.where(ok, np.maximum(out_hi, last + 1), out_hi)
    out_lo = np.clip(out_lo, 0, out_len)
    out_hi = np.clip(out_hi, 0, out_len)
    empty = out_lo >= out_hi
    return np.where(empty, 0, out_lo), np.where(empty, 0, out_hi)


def window_backward(
    need: tuple[int, int],
    *,
    kernel_size: int,
    stride: int,
    dilation: int,
    left: int,
    in_len: int,
) -> tuple[int, int]:
    """Input rows a sliding window op reads to produce output rows ``need``."""
    lo, hi = need
    if lo >= hi:
        return EMPTY
    first = lo * stride - left
    last = (hi - 1) * stride - left + (kernel_size - 1) * dilation
    first, last = max(first, 0), min(last, in_len - 1)
    return (first, last + 1) if first <= last else EMPTY


def hull(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """Smallest interval holding both (empty intervals ignored)."""
    if a[0] >= a[1]:
        return b
    if b[0] >= b[1]:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]))


def _window_params(op: ops.Op, in_len: int) -> dict:
    if isinstance(op, ops.Conv1D):
        left, _, out_len = conv_padding(
            in_len, op.kernel_size, op.stride, op.dilation, op.padding
        )
        return dict(
            kernel_size=op.kernel_size,
            stride=op.stride,
            dilation=op.dilation,
            left=left,
            out_len=out_len,
        )
    left, _, out_len = pool_padding(in_len, op.pool_size, op.stride, op.padding)
    return dict(
        kernel_size=op.pool_size,
        stride=op.stride,
        dilation=1,
        left=left,
        out_len=out_len,
    )


def forward_interval(
    op: ops.Op,
    in_intervals: list[tuple[np.ndarray, np.ndarray]],
    in_lens: list[int],
    out_len: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The output interval of a length-local op from its inputs' intervals.

    Only for ops that keep the ``(seq_len, n_channels)`` layout and have a
    local rule (see :func:`ismkernel.plan.planner.local_rule`).
    """
    if isinstance(op, (ops.Conv1D, ops.Pool1D)):
        lo, hi = in_intervals[0]
        return window_forward(lo, hi, **_window_params(op, in_lens[0]))
    if isinstance(op, (ops.Merge, ops.Concatenate)) or len(in_intervals) > 1:
        lo = np.full(in_intervals[0][0].shape, np.iinfo(np.int64).max, dtype=np.int64)
        hi = np.full(lo.shape, np.iinfo(np.int64).min, dtype=np.int64)
        for a, b in in_intervals:
            ok = a < b
            lo = np.where(ok, np.minimum(lo, a), lo)
            hi = np.where(ok, np.maximum(hi, b), hi)
        empty = lo >= hi
        return np.where(empty, 0, lo), np.where(empty, 0, hi)
    lo, hi = in_intervals[0]
    if isinstance(op, ops.Crop1D):
        lo, hi = lo - op.start, hi - op.start
    elif isinstance(op, ops.ZeroPad1D):
        lo, hi = lo + op.left, hi + op.left
    elif isinstance(op, ops.UpSample1D):
        lo, hi = lo * op.size, hi * op.size
    # pointwise ops keep the interval
    lo, hi = np.clip(lo, 0, out_len), np.clip(hi, 0, out_len)
    empty = lo >= hi
    return np.where(empty, 0, lo), np.where(empty, 0, hi)


def backward_need(
    op: ops.Op, need: tuple[int, int], in_len: int, in_index: int
) -> tuple[int, int]:
    """Rows of input ``in_index`` that a length-local op reads for output rows
    ``need``."""
    lo, hi = need
    if lo >= hi:
        return EMPTY
    if isinstance(op, (ops.Conv1D, ops.Pool1D)):
        p = _window_params(op, in_len)
        p.pop("out_len")
        return window_backward(need, in_len=in_len, **p)
    if isinstance(op, ops.Crop1D):
        lo, hi = lo + op.start, hi + op.start
    elif isinstance(op, ops.ZeroPad1D):
        lo, hi = lo - op.left, hi - op.left
    elif isinstance(op, ops.UpSample1D):
        lo, hi = lo // op.size, (hi - 1) // op.size + 1
    lo, hi = max(lo, 0), min(hi, in_len)
    return (lo, hi) if lo < hi else EMPTY
