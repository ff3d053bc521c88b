"""The layer-spec IR shared by the importers, the planner and every backend."""

from ismkernel.ir import nodes
from ismkernel.ir.graph import Graph, TensorSpec
from ismkernel.ir.nodes import Node
from ismkernel.ir.shapes import conv_padding, infer_shape, pool_padding

__all__ = [
    "Graph",
    "Node",
    "TensorSpec",
    "conv_padding",
    "infer_shape",
    "nodes",
    "pool_padding",
]
