"""Shape inference: each op's :meth:`~ismkernel.ir.nodes.Op.shape` rule.

The padding rules every backend obeys live in :mod:`ismkernel.ir.geometry`
and are re-exported here.
"""

from __future__ import annotations

from ismkernel.ir import nodes as ops
from ismkernel.ir.geometry import conv_padding, pool_padding

__all__ = ["conv_padding", "pool_padding", "infer_shape"]

Shape = tuple[int | None, ...]


def infer_shape(node: ops.Node, in_shapes: list[Shape]) -> Shape:
    """Per-sample output shape of ``node`` given its inputs' shapes.

    Raises
    ------
    ShapeError
        Naming the layer, when the inputs do not fit the op or its weights.
    """
    if isinstance(node.op, ops.Input):
        return tuple(node.op.shape)
    return node.op.shape(node, list(in_shapes))
