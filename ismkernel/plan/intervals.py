"""Interval rules: which output rows a mutation can change.

Each op states its own rules (:meth:`~ismkernel.ir.nodes.Op.forward` and
:meth:`~ismkernel.ir.nodes.Op.backward`); the arithmetic they share is in
:mod:`ismkernel.ir.geometry`. Everything is pure index arithmetic on the
padding rules; no data is touched.
"""

from __future__ import annotations

import numpy as np

from ismkernel.ir import nodes as ops
from ismkernel.ir.geometry import (
    EMPTY,
    hull,
    window_backward,
    window_forward,
)

__all__ = [
    "window_forward",
    "window_backward",
    "forward_interval",
    "backward_need",
    "hull",
    "EMPTY",
]


def forward_interval(
    op: ops.Op,
    in_intervals: list[tuple[np.ndarray, np.ndarray]],
    in_lens: list[int],
    out_len: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The output interval of a length-local op from its inputs' intervals."""
    return op.forward(in_intervals, in_lens, out_len)


def backward_need(
    op: ops.Op, need: tuple[int, int], in_len: int, in_index: int
) -> tuple[int, int]:
    """Rows of input ``in_index`` that a length-local op reads for output rows
    ``need``."""
    if need[0] >= need[1]:
        return EMPTY
    return op.backward(need, in_len, in_index)
