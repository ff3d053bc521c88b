"""Index arithmetic along the length axis: padding rules and sliding windows.

The padding arithmetic is the specification: it follows TensorFlow's ``SAME``
rule (the odd extra padded column goes on the right) and Keras's ``causal``
rule (all padding on the left). The ops' shape and interval rules and every
backend call these functions; none re-derives padding itself.

An *interval* is a pair of int64 arrays ``(lo, hi)`` over the mutated
positions: for the mutation at position ``positions[j]``, the half-open range
``[lo[j], hi[j])`` of a node's output rows it can change. ``lo >= hi`` means
nothing changes. A *need* is one ``(start, stop)`` pair of ints: the rows of
a node anything downstream reads.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "EMPTY",
    "conv_padding",
    "pool_padding",
    "window_forward",
    "window_backward",
    "hull",
    "clip_interval",
    "interval_hull",
]

#: The empty need: no row of a node is read.
EMPTY = (0, 0)


def conv_padding(
    seq_len: int,
    kernel_size: int,
    stride: int,
    dilation: int,
    padding: str | tuple[int, int],
) -> tuple[int, int, int]:
    """Padding and output length of a 1-D convolution.

    ``padding`` is ``"valid"``, ``"same"``, ``"causal"`` or ``(left, right)``.

    Returns
    -------
    (left, right, out_len) : tuple of int
        Zero rows added before and after the input, and the output length.
    """
    span = (kernel_size - 1) * dilation + 1
    if isinstance(padding, tuple):
        left, right = padding
    elif padding == "valid":
        left = right = 0
    elif padding == "causal":
        left, right = span - 1, 0
    elif padding == "same":
        out_len = -(-seq_len // stride)
        total = max((out_len - 1) * stride + span - seq_len, 0)
        left = total // 2
        right = total - left
    else:  # validated at import
        raise ValueError(padding)
    padded = seq_len + left + right
    out_len = (padded - span) // stride + 1 if padded >= span else 0
    return left, right, out_len


def pool_padding(
    seq_len: int, pool_size: int, stride: int, padding: str | tuple[int, int]
) -> tuple[int, int, int]:
    """Padding and output length of a 1-D pooling window (TensorFlow rules)."""
    return conv_padding(seq_len, pool_size, stride, 1, padding)


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


def clip_interval(
    lo: np.ndarray, hi: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` clipped to ``[0, length)``, empty intervals as ``(0, 0)``."""
    lo, hi = np.clip(lo, 0, length), np.clip(hi, 0, length)
    empty = lo >= hi
    return np.where(empty, 0, lo), np.where(empty, 0, hi)


def interval_hull(
    intervals: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Per position, the hull of several intervals (empty ones ignored)."""
    lo = np.full(intervals[0][0].shape, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(lo.shape, np.iinfo(np.int64).min, dtype=np.int64)
    for a, b in intervals:
        ok = a < b
        lo = np.where(ok, np.minimum(lo, a), lo)
        hi = np.where(ok, np.maximum(hi, b), hi)
    empty = lo >= hi
    return np.where(empty, 0, lo), np.where(empty, 0, hi)
