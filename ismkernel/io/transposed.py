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

Negative padding is a crop (:class:`~ismkernel.ir.nodes.Crop1D`): of the
zero-inserted rows before the convolution where they outnumber it, else of
the convolution's output (a crop of every input row on one side with zero
rows added on the other: the output is bias alone there). Neither padding
depends on the sequence length, so a free length stays free. The frameworks
differ only in how they define ``pad_left`` and ``extra``; the importers work
those out and call :func:`transposed_geometry`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ismkernel.ir import nodes as ops

__all__ = ["TransposedGeometry", "transposed_geometry", "transposed_ops"]


@dataclass(frozen=True)
class TransposedGeometry:
    """How a transposed convolution is built from IR ops.

    ``insert``: the ZeroInsert1D factor (1: no such node); ``crop``: rows
    dropped (``(0, 0)``: no Crop1D), from the zero-inserted input before the
    convolution or, with ``crop_output``, from its output; ``padding``: the
    convolution's padding, as ``Conv1D`` takes it.
    """

    insert: int
    crop: tuple[int, int]
    padding: str | tuple[int, int]
    crop_output: bool = False


def transposed_geometry(
    kernel_size: int,
    stride: int,
    dilation: int,
    pad_left: int,
    extra: int,
    seq_len: int | None = None,
) -> TransposedGeometry:
    """The IR ops of a transposed convolution with output row ``o`` reading
    input rows ``i`` with ``o = i * stride + k * dilation - pad_left`` and
    ``(seq_len - 1) * stride + extra`` output rows (``seq_len``: ``None``
    where free)."""
    span = (kernel_size - 1) * dilation + 1
    left = span - 1 - pad_left
    right = extra - 2 - left + span
    crop = (max(-left, 0), max(-right, 0))
    left, right = max(left, 0), max(right, 0)
    inserted = None if seq_len is None else (seq_len - 1) * stride + 1
    crop_output = sum(crop) > 0 and (inserted is None or sum(crop) >= inserted)
    if left == right == 0:
        padding: str | tuple[int, int] = "valid"
    elif (left, right) == ((span - 1) // 2, span - 1 - (span - 1) // 2):
        padding = "same"  # the convolution's stride is 1
    elif (left, right) == (span - 1, 0):
        padding = "causal"
    else:
        padding = (left, right)
    return TransposedGeometry(stride, crop, padding, crop_output)


def transposed_ops(
    geometry: TransposedGeometry, conv: ops.Conv1D
) -> list[tuple[ops.Op, str]]:
    """The ops in order, each with the suffix its node name takes after the
    layer's (the convolution keeps the layer's own name)."""
    out: list[tuple[ops.Op, str]] = []
    if geometry.insert > 1:
        out.append((ops.ZeroInsert1D(geometry.insert), "/zero_insert"))
    crop = ops.Crop1D(*geometry.crop)
    if geometry.crop != (0, 0) and not geometry.crop_output:
        out.append((crop, "/crop"))
    out.append(
        (
            replace(conv, padding=geometry.padding),
            "/conv" if geometry.crop_output else "",
        )
    )
    if geometry.crop_output:
        out.append((crop, ""))
    return out
