"""Slow, obviously right implementations, independent of ismkernel.backends.

Loops over output positions, with padding written from TensorFlow's definition
of SAME (output length ceil(L / stride), the odd extra pad on the right) and
Keras's CAUSAL (all padding on the left). Used to test the reference backend
and the padding rules in ``ismkernel.ir``; float64 throughout.
"""

from __future__ import annotations

import math

import numpy as np


def padding(seq_len: int, span: int, stride: int, mode: str) -> tuple[int, int]:
    if mode == "valid":
        return 0, 0
    if mode == "causal":
        return span - 1, 0
    out_len = math.ceil(seq_len / stride)
    total = max((out_len - 1) * stride + span - seq_len, 0)
    return total // 2, total - total // 2


def conv1d(x, kernel, bias, stride=1, dilation=1, mode="valid", groups=1):
    """x: (n, L, C); kernel: (K, C // groups, F). Returns (n, out_len, F)."""
    x = np.asarray(x, np.float64)
    n, L, C = x.shape
    K, cg, F = kernel.shape
    span = (K - 1) * dilation + 1
    left, right = padding(L, span, stride, mode)
    padded = np.zeros((n, L + left + right, C))
    padded[:, left : left + L] = x
    out_len = (L + left + right - span) // stride + 1
    fg = F // groups
    out = np.zeros((n, out_len, F))
    for o in range(out_len):
        for f in range(F):
            g = f // fg
            acc = np.zeros(n)
            for k in range(K):
                row = padded[:, o * stride + k * dilation, g * cg : (g + 1) * cg]
                acc += row @ kernel[k, :, f].astype(np.float64)
            out[:, o, f] = acc + (0 if bias is None else bias[f])
    return out


def pool1d(x, pool_size, stride, mode, padding_mode):
    """Max or average pooling; padded cells never count."""
    x = np.asarray(x, np.float64)
    n, L, C = x.shape
    left, right = padding(L, pool_size, stride, padding_mode)
    out_len = (L + left + right - pool_size) // stride + 1
    out = np.zeros((n, out_len, C))
    for o in range(out_len):
        lo = o * stride - left
        rows = [r for r in range(lo, lo + pool_size) if 0 <= r < L]
        window = x[:, rows]
        out[:, o] = window.max(axis=1) if mode == "max" else window.mean(axis=1)
    return out


def mutate(x, position, alternative):
    """A copy of one sequence (L, C) with row ``position`` set."""
    y = np.array(x, copy=True)
    y[position] = alternative
    return y
