"""The :class:`Model` users load and run."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ismkernel import config
from ismkernel.backends import reference
from ismkernel.inputs import as_feeds, check_dtype, check_positive_int
from ismkernel.io import read_graph
from ismkernel.ir import Graph, TensorSpec

__all__ = ["Model", "load_model"]


class Model:
    """A model imported into the IR, runnable without any DL framework.

    Attributes
    ----------
    graph : Graph
        The IR graph.
    path : str
        The file it was read from.
    format : str
        ``"keras-h5"`` or ``"keras-v3"``.
    keras_version : str
        The Keras version that wrote the file.
    """

    def __init__(
        self, graph: Graph, path: str = "", format: str = "", keras_version: str = ""
    ):
        self.graph = graph
        self.path = path
        self.format = format
        self.keras_version = keras_version

    @property
    def inputs(self) -> list[TensorSpec]:
        """Name and per-sample shape of each input, in model input order."""
        return self.graph.input_specs

    @property
    def outputs(self) -> list[TensorSpec]:
        """Name and per-sample shape of each output, in model output order."""
        return self.graph.output_specs

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    @property
    def input_shapes(self) -> list[tuple]:
        return [s.shape for s in self.inputs]

    @property
    def output_shapes(self) -> list[tuple]:
        return [s.shape for s in self.outputs]

    @property
    def n_params(self) -> int:
        seen: set[int] = set()
        total = 0
        for node in self.graph.nodes.values():
            for w in node.weights.values():
                if id(w) not in seen:  # shared layers count once
                    seen.add(id(w))
                    total += w.size
        return total

    def predict(
        self,
        x: Any,
        *,
        batch_size: int | None = None,
        dtype: str = config.DEFAULT_DTYPE,
    ) -> list[np.ndarray]:
        """Run the model with the reference backend.

        Parameters
        ----------
        x : ndarray, list of ndarray or dict of str to ndarray
            ``(n_seqs, *input_shape)`` for a single-input model; for several
            inputs a list in model input order or a dict by input name.
        batch_size : int, optional
            Sequences per forward pass; default from the memory budget.
        dtype : {"float32", "float64"}
            Computation dtype.

        Returns
        -------
        list of ndarray
            One array per model output, in model output order, each
            ``(n_seqs, *output_shape)`` of ``dtype``.
        """
        dt = check_dtype(dtype)
        feeds = as_feeds(self.inputs, x, dt)
        batch = check_positive_int(
            batch_size, "batch_size"
        ) or reference.default_batch_size(self.graph, dt)
        n_seqs = feeds[0].shape[0]
        if n_seqs <= batch:
            return reference.forward(self.graph, feeds)
        parts = [
            reference.forward(self.graph, [f[i : i + batch] for f in feeds])
            for i in range(0, n_seqs, batch)
        ]
        return [np.concatenate(p, axis=0) for p in zip(*parts)]

    def summary(self) -> str:
        """A table of the IR: node, op, output shape, parameters, inputs."""
        rows = [("node", "op", "output shape", "params", "inputs")]
        for node in self.graph.nodes.values():
            op = node.op.describe()
            rows.append(
                (
                    node.name,
                    op,
                    "(None, "
                    + ", ".join("None" if d is None else str(d) for d in node.shape)
                    + ")",
                    f"{node.n_params:,}",
                    ", ".join(node.inputs),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [f"Model: {os.path.basename(self.path) or '<in memory>'}"]
        if self.format:
            lines.append(f"Format: {self.format} (Keras {self.keras_version})")
        line = "  ".join(h.ljust(w) for h, w in zip(rows[0], widths))
        lines += [line, "-" * len(line)]
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows[1:]
        ]
        lines.append("-" * len(line))
        lines.append(
            "Inputs:  " + ", ".join(f"{s.name} {s.shape}" for s in self.inputs)
        )
        lines.append(
            "Outputs: " + ", ".join(f"{s.name} {s.shape}" for s in self.outputs)
        )
        lines.append(f"Parameters: {self.n_params:,}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}{s.shape}" for s in self.inputs)
        outs = ", ".join(f"{s.name}{s.shape}" for s in self.outputs)
        return f"<Model {os.path.basename(self.path)!r}: inputs [{ins}] -> outputs [{outs}]>"


def load_model(path: str | os.PathLike) -> Model:
    """Load a Keras model file (``.h5`` of Keras 2 or 3, or a ``.keras`` archive).

    Only the file's JSON config and weight arrays are read; nothing in it is
    executed.

    Raises
    ------
    ModelFileError
        The file is missing, corrupt, truncated, of an unknown format, or its
        config and weights do not agree.
    UnsupportedLayerError
        A layer or option the IR cannot represent (named in the message).
    """
    graph, info = read_graph(path)
    return Model(graph, os.fspath(path), info["format"], info["keras_version"])
