"""A transposed convolution as ops the IR already has.

A transposed convolution of stride ``s``, dilation ``d`` and kernel ``W`` of
``kernel_size`` taps computes, for every output row ``o``,

    y[o] = sum of x[i] @ W[k] over the (i, k) with o = i * s + k * d - pad_left

on ``out_len = (seq_len - 1) * s + extra`` rows. That is exactly a
:class:`~ismkernel.ir.nodes.ZeroInsert1D` of factor ``s`` (row ``i`` at row
``i * s``, zero rows between) followed by an ordinary stride-1 convolution of
the same dilation with the kernel reversed and ``(left, right)`` zero rows of
padding, where

    left  = span - 1 - pad_left
    right = extra - 2 - left + span          (span = (kernel_size - 1) * d + 1)

Negative padding is a crop of the zero-inserted rows (a
:class:`~ismkernel.ir.nodes.Crop1D` before the convolution). Neither depends
on the sequence length, so a free length stays free. The frameworks differ
only in how they define ``pad_left`` and ``extra``; the importers work those
out and call :func:`transposed_geometry`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TransposedGeometry", "transposed_geometry"]


@dataclass(frozen=True)
class TransposedGeometry:
    """How a transposed convolution is built from IR ops.

    ``insert``: the ZeroInsert1D factor (1: no such node); ``crop``: rows
    dropped from the zero-inserted input before the convolution (``(0, 0)``:
    no Crop1D); ``padding``: the convolution's padding, as ``Conv1D`` takes it.
    """

    insert: int
    crop: tuple[int, int]
    padding: str | tuple[int, int]


def transposed_geometry(
    kernel_size: int, stride: int, dilation: int, pad_left: int, extra: int
) -> TransposedGeometry:
    """The IR ops of a transposed convolution with output row ``o`` reading
    input rows ``i`` with ``o = i * stride + k * dilation - pad_left`` and
    ``(seq_len - 1) * stride + extra`` output rows."""
    span = (kernel_size - 1) * dilation + 1
    left = span - 1 - pad_left
    right = extra - 2 - left + span
    crop = (max(-left, 0), max(-right, 0))
    left, right = max(left, 0), max(right, 0)
    if left == right == 0:
        padding: str | tuple[int, int] = "valid"
    elif (left, right) == ((span - 1) // 2, span - 1 - (span - 1) // 2):
        padding = "same"  # the convolution's stride is 1
    elif (left, right) == (span - 1, 0):
        padding = "causal"
    else:
        padding = (left, right)
    return TransposedGeometry(insert=stride, crop=crop, padding=padding)
