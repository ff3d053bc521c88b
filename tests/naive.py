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


def col2im_add(out, taps, in_start, out_start, left, stride, dilation):
    """Add per-tap products onto output windows, one product at a time:
    ``taps[m, j, k]`` (input row ``in_start[m] + j`` times tap ``k``) lands on
    output row ``o`` with ``o * stride - left + k * dilation`` equal to that
    input row, where ``o`` lies in mutant ``m``'s window."""
    n_mut, width, _ = out.shape
    for m in range(n_mut):
        for j in range(taps.shape[1]):
            for k in range(taps.shape[2]):
                num = in_start[m] + j + left - k * dilation
                if num < 0 or num % stride:
                    continue
                o = num // stride - out_start[m]
                if 0 <= o < width:
                    out[m, o] += taps[m, j, k]


def conv_transpose1d(x, kernel, bias, stride, dilation, pad_left, out_len, groups=1):
    """Transposed convolution by its definition: input row ``i`` times tap
    ``k`` is added to output row ``i * stride + k * dilation - pad_left``
    where that row is one of ``out_len``. x: (n, L, C); kernel: (K, C,
    F // groups) as PyTorch orders a transposed kernel (in, out), taps first.
    Returns (n, out_len, F)."""
    x = np.asarray(x, np.float64)
    n, L, C = x.shape
    K, _, fg = kernel.shape
    cg = C // groups
    out = np.zeros((n, out_len, fg * groups))
    for i in range(L):
        for k in range(K):
            o = i * stride + k * dilation - pad_left
            if not 0 <= o < out_len:
                continue
            for g in range(groups):
                w = kernel[k, g * cg : (g + 1) * cg].astype(np.float64)
                out[:, o, g * fg : (g + 1) * fg] += x[:, i, g * cg : (g + 1) * cg] @ w
    if bias is not None:
        out += np.asarray(bias, np.float64)
    return out


def keras_conv_transpose_geometry(L, K, stride, dilation, padding, output_padding):
    """``(pad_left, out_len)`` of a Keras transposed convolution: the output
    length of ``conv_utils.deconv_output_length`` and the left padding
    TensorFlow gives the forward convolution from ``out_len`` to ``L`` rows
    (SAME: ``max((L - 1) * stride + span - out_len, 0) // 2``)."""
    span = (K - 1) * dilation + 1
    if output_padding is None:
        if padding == "valid":
            out_len = L * stride + max(span - stride, 0)
        else:
            out_len = L * stride
    else:
        pad = span // 2 if padding == "same" else 0
        out_len = (L - 1) * stride + span - 2 * pad + output_padding
    if padding == "valid":
        return 0, out_len
    return max((L - 1) * stride + span - out_len, 0) // 2, out_len


def onnx_conv_transpose_geometry(
    L, K, stride, dilation, pads, output_padding, auto_pad="NOTSET", output_shape=None
):
    """``(pad_left, out_len)`` of an ONNX ConvTranspose, from the operator's
    specification: explicit ``pads``, or, for SAME_UPPER/SAME_LOWER or an
    ``output_shape``, ``total = stride * (L - 1) + output_padding + span -
    out_len`` split with the smaller half first for SAME_UPPER and last
    otherwise."""
    span = (K - 1) * dilation + 1
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out_len = output_shape if output_shape is not None else L * stride
        total = stride * (L - 1) + output_padding + span - out_len
        start = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        return start, out_len
    if auto_pad == "VALID":
        pads = (0, 0)
    out_len = stride * (L - 1) + output_padding + span - pads[0] - pads[1]
    return pads[0], out_len
