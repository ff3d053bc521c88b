"""The IR graph: a DAG of :class:`~ismkernel.ir.nodes.Node`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ismkernel.errors import ShapeError
from ismkernel.ir import nodes as ops
from ismkernel.ir.shapes import infer_shape

__all__ = ["Graph", "TensorSpec"]


@dataclass(frozen=True)
class TensorSpec:
    """Name and per-sample shape of a model input or output."""

    name: str
    shape: tuple[int | None, ...]

    def __repr__(self) -> str:
        return f"TensorSpec(name={self.name!r}, shape={self.shape})"


@dataclass
class Graph:
    """A DAG of nodes with named inputs and outputs.

    ``nodes`` is kept in topological order: :meth:`add` checks that a node's
    inputs exist and infers its shape; :meth:`finalize` drops nodes no output
    depends on.

    Parameters
    ----------
    nodes : dict of str to Node
    inputs : list of str
        Node names of the model inputs, in model input order.
    outputs : list of str
        Node names of the model outputs, in model output order (a node may
        appear more than once).
    output_names : list of str
        User-facing names of the outputs (the Keras layer names).
    """

    nodes: dict[str, ops.Node] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)

    def add(self, node: ops.Node) -> str:
        if node.name in self.nodes:
            raise ShapeError(f"duplicate node name '{node.name}' in the graph")
        for src in node.inputs:
            if src not in self.nodes:
                raise ShapeError(
                    f"{node.where()} reads '{src}', which is not defined before it"
                )
        node.shape = infer_shape(node, [self.nodes[i].shape for i in node.inputs])
        self.nodes[node.name] = node
        return node.name

    def finalize(self) -> Graph:
        """Drop the nodes that neither an output nor an input depends on."""
        needed: set[str] = set()
        stack = list(self.outputs) + list(self.inputs)
        while stack:
            name = stack.pop()
            if name not in needed:
                needed.add(name)
                stack.extend(self.nodes[name].inputs)
        self.nodes = {k: v for k, v in self.nodes.items() if k in needed}
        return self

    @property
    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec(n, self.nodes[n].shape) for n in self.inputs]

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [
            TensorSpec(name, self.nodes[n].shape)
            for name, n in zip(self.output_names, self.outputs)
        ]

    def consumers(self) -> dict[str, list[str]]:
        """For each node, the nodes that read it."""
        out: dict[str, list[str]] = {k: [] for k in self.nodes}
        for node in self.nodes.values():
            for src in node.inputs:
                out[src].append(node.name)
        return out
