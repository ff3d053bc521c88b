"""The :class:`Model` users load and run."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ismkernel import config
from ismkernel.backends import reference
from ismkernel.errors import InputError, ModelFileError
from ismkernel.inputs import array_module, as_feeds, check_dtype, check_positive_int
from ismkernel.io import read_graph
from ismkernel.io.onnx import NeedsLength
from ismkernel.ir import Graph, TensorSpec
from ismkernel.reduce import OutputAxes

__all__ = ["Model", "load_model"]


def output_picks(names: list[str], outputs: list[str]) -> list[int]:
    """The indices in ``names`` (a model's outputs) of ``outputs``, which must
    be a non-empty list of them."""
    missing = [o for o in outputs if o not in names]
    if missing or not outputs:
        raise InputError(
            f"outputs {missing or outputs} are not model outputs; outputs: {names}"
        )
    return [names.index(o) for o in outputs]


class Model:
    """A model imported into the IR, runnable without any DL framework.

    Attributes
    ----------
    graph : Graph
        The IR graph.
    path : str
        The file it was read from.
    format : str
        ``"keras-h5"``, ``"keras-v3"`` or ``"onnx"``.
    keras_version : str
        The Keras version that wrote the file (empty for ONNX).
    producer : str
        What wrote the file, for messages: ``"Keras 3.15.1"``,
        ``"pytorch 2.13.0, opset 20"``.
    input_perms, output_perms : list of tuple of int
        Per input and output, how the model's own layout maps to the IR's
        ``(seq_len, n_channels)``: axis ``i`` of a sample as the model takes or
        gives it is IR axis ``perm[i]``. PyTorch's channels-first sequences have
        ``(1, 0)``; Keras models the identity. Arrays cross this boundary in
        the model's layout.
    """

    def __init__(
        self,
        graph: Graph,
        path: str = "",
        format: str = "",
        keras_version: str = "",
        *,
        producer: str = "",
        input_perms: list[tuple[int, ...]] | None = None,
        output_perms: list[tuple[int, ...]] | None = None,
    ):
        self.graph = graph
        self.path = path
        self.format = format
        self.keras_version = keras_version
        self.producer = producer or (f"Keras {keras_version}" if keras_version else "")
        self.input_perms = (
            [tuple(p) for p in input_perms]
            if input_perms
            else [tuple(range(len(s.shape))) for s in graph.input_specs]
        )
        self.output_perms = (
            [tuple(p) for p in output_perms]
            if output_perms
            else [tuple(range(len(s.shape))) for s in graph.output_specs]
        )

    @property
    def inputs(self) -> list[TensorSpec]:
        """Name and per-sample shape of each input, in model input order and in
        the model's own layout."""
        return [
            TensorSpec(s.name, _model_shape(s.shape, p))
            for s, p in zip(self.graph.input_specs, self.input_perms)
        ]

    @property
    def outputs(self) -> list[TensorSpec]:
        """Name and per-sample shape of each output, in model output order and
        in the model's own layout."""
        return [
            TensorSpec(s.name, _model_shape(s.shape, p))
            for s, p in zip(self.graph.output_specs, self.output_perms)
        ]

    @property
    def output_axes(self) -> list[OutputAxes]:
        """Per output, which axes (in the model's layout) are length and tasks."""
        out = []
        for spec, ir, perm in zip(
            self.outputs, self.graph.output_specs, self.output_perms
        ):
            rank = len(ir.shape)
            if rank == 2 and 0 in perm and 1 in perm:
                length, channels = perm.index(0), perm.index(1)
            elif rank >= 1 and rank - 1 in perm:
                length, channels = None, perm.index(rank - 1)
            else:
                length = channels = None
            out.append(OutputAxes(spec.name, tuple(spec.shape), length, channels))
        return out

    #: True for a model whose graph waits for a sequence length.
    deferred_length = False

    def specialize(self, x: Any) -> Model:
        """The model to run on ``x``: itself (see :class:`LengthDeferredModel`)."""
        return self

    def with_length(self, length: int) -> Model:
        """The model for sequences of ``length``: itself, whose graph already
        takes them (or says why not when run)."""
        return self

    def select_outputs(self, outputs: list[str]) -> Model:
        """The same model with only ``outputs`` (names, in that order): nodes
        no kept output needs are dropped, so nothing computes them."""
        picks = output_picks(self.output_names, outputs)
        g = self.graph
        graph = Graph(
            nodes=dict(g.nodes),
            inputs=list(g.inputs),
            outputs=[g.outputs[k] for k in picks],
            output_names=[g.output_names[k] for k in picks],
        ).finalize()
        return Model(
            graph,
            self.path,
            self.format,
            self.keras_version,
            producer=self.producer,
            input_perms=self.input_perms,
            output_perms=[self.output_perms[k] for k in picks],
        )

    def feeds(
        self, x: Any, dtype: np.dtype, name: str = "x", device: bool = False
    ) -> list[np.ndarray]:
        """``x`` validated against the model's inputs, as IR-layout arrays
        (GPU arrays stay on their device where ``device``)."""
        feeds = as_feeds(self.inputs, x, dtype, name, device)
        return [_to_ir(f, p, 1) for f, p in zip(feeds, self.input_perms)]

    def from_ir(self, arrays: list[np.ndarray], lead: int) -> list[np.ndarray]:
        """Output arrays with ``lead`` leading axes, from IR to model layout."""
        return [_from_ir(a, p, lead) for a, p in zip(arrays, self.output_perms)]

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
        feeds = self.feeds(x, dt)
        batch = check_positive_int(
            batch_size, "batch_size"
        ) or reference.default_batch_size(self.graph, dt)
        n_seqs = feeds[0].shape[0]
        if n_seqs <= batch:
            return self.from_ir(reference.forward(self.graph, feeds), 1)
        parts = [
            reference.forward(self.graph, [f[i : i + batch] for f in feeds])
            for i in range(0, n_seqs, batch)
        ]
        return self.from_ir([np.concatenate(p, axis=0) for p in zip(*parts)], 1)

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
            lines.append(f"Format: {self.format} ({self.producer})")
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


# A layout ``perm`` lists, per axis of a sample in the model's layout, the IR
# axis it is, or None for a size-1 axis the IR array does not have. IR axes of
# size 1 may be missing from it (a per-sample scalar is held as shape (1,)).


def _model_shape(ir_shape: tuple, perm: tuple) -> tuple:
    return tuple(1 if j is None else ir_shape[j] for j in perm)


def _from_ir(a: np.ndarray, perm: tuple, lead: int) -> np.ndarray:
    """IR array ``a`` (after ``lead`` leading axes) in the model's layout."""
    real = [j for j in perm if j is not None]
    rank = a.ndim - lead
    if real == list(range(rank)) and len(real) == len(perm):
        return a
    order = real + [j for j in range(rank) if j not in real]  # missing ones: size 1
    moved = a.transpose(tuple(range(lead)) + tuple(lead + j for j in order))
    shape = a.shape[:lead] + _model_shape(a.shape[lead:], perm)
    return array_module(a).ascontiguousarray(moved.reshape(shape))


def _to_ir(a: np.ndarray, perm: tuple, lead: int) -> np.ndarray:
    """Array ``a`` in the model's layout as an IR array."""
    real = [j for j in perm if j is not None]
    if real == list(range(len(perm))):
        return a
    kept = a.reshape(
        a.shape[:lead] + tuple(d for d, j in zip(a.shape[lead:], perm) if j is not None)
    )
    order = tuple(int(i) for i in np.argsort(real))
    return array_module(a).ascontiguousarray(
        kept.transpose(tuple(range(lead)) + tuple(lead + i for i in order))
    )


def load_model(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> Model:
    """Load a model file: Keras ``.h5`` (Keras 2 or 3), a Keras 3 ``.keras``
    archive, or ONNX (needs the ``onnx`` extra). The format is read from the
    file's content, not its name.

    Only the file's config and weight arrays are read; nothing in it is
    executed. ONNX models exported from PyTorch take and return arrays in
    PyTorch's channels-first layout, ``(n_seqs, n_channels, seq_len)``.

    Parameters
    ----------
    path : str or os.PathLike
        The model file.
    allow_nonfinite : bool
        Load weights holding NaN or infinity instead of refusing them (every
        prediction through such a weight is NaN).

    Raises
    ------
    ModelFileError
        The file is missing, corrupt, truncated, of an unknown format, or its
        config and weights do not agree; or a weight holds NaN or infinity
        (the layer and variable are named).
    UnsupportedLayerError
        A layer or option the IR cannot represent (named in the message).
    InputError
        ``path`` is not a path.
    """
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(
            "load_model takes the path of a model file (str or os.PathLike), got "
            f"{type(path).__name__} {path!r}"
        )
    if not isinstance(allow_nonfinite, (bool, np.bool_)):
        raise InputError(
            f"allow_nonfinite must be True or False, got {allow_nonfinite!r}"
        )
    path = os.fspath(path)
    try:
        graph, info = read_graph(path)
    except NeedsLength as err:
        return LengthDeferredModel(path, str(err), allow_nonfinite=allow_nonfinite)
    if not allow_nonfinite:
        check_finite_weights(graph, path)
    return _model(graph, path, info)


def check_finite_weights(graph: Graph, path: str) -> None:
    """Refuse weights holding NaN or infinity, naming the layer and variable:
    they make every prediction through them NaN without a word."""
    seen: set[int] = set()
    for node in graph.nodes.values():
        for var, w in node.weights.items():
            if id(w) in seen or not np.issubdtype(np.asarray(w).dtype, np.inexact):
                continue
            seen.add(id(w))
            finite = np.isfinite(w)
            if finite.all():
                continue
            bad = np.argwhere(~finite)
            first = tuple(int(i) for i in bad[0])
            value = np.asarray(w)[first]
            layer = node.layer or node.name
            kind = f" ({node.layer_class})" if node.layer_class else ""
            raise ModelFileError(
                f"'{path}': layer '{layer}'{kind}, variable '{var}' holds "
                f"{len(bad)} non-finite value(s) ({value} first, at index "
                f"{first}); every prediction through it would be NaN. The file is "
                "damaged or its training diverged; "
                "load_model(..., allow_nonfinite=True) loads it anyway"
            )


def _model(graph: Graph, path: str, info: dict) -> Model:
    return Model(
        graph,
        path,
        info["format"],
        info.get("keras_version", ""),
        producer=info.get("producer", ""),
        input_perms=info.get("input_perms"),
        output_perms=info.get("output_perms"),
    )


class LengthDeferredModel(Model):
    """An ONNX model whose graph computes with its sequence length, which the
    file leaves free (``dynamic_axes`` on the length; bpnet-lite's crops use
    ``X.shape[2]``). Its IR graph is built for a length when one is known:
    from the arrays :meth:`predict` and :func:`~ismkernel.ism` are given, or
    :meth:`with_length`. One graph is kept per length.
    """

    deferred_length = True

    def __init__(self, path: str, why: str, *, allow_nonfinite: bool = False):
        from ismkernel.io.onnx import declared_specs

        self.path = path
        self.allow_nonfinite = allow_nonfinite
        self.format = "onnx"
        self.keras_version = ""
        self.producer = "graph built per sequence length"
        self.why = why
        self._built: dict[int, Model] = {}
        ins, outs = declared_specs(path)
        self._inputs = [TensorSpec(n, d) for n, d in ins]
        self._outputs = [TensorSpec(n, d) for n, d in outs]

    @property
    def graph(self) -> Graph:  # type: ignore[override]
        raise InputError(
            f"'{self.path}' has no graph until its sequence length is known ("
            f"{self.why}); use model.with_length(L), or pass sequences"
        )

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    @property
    def n_params(self) -> int:
        import onnx

        model = onnx.load(self.path, load_external_data=False)
        return int(sum(np.prod(t.dims) for t in model.graph.initializer))

    def with_length(self, length: int) -> Model:
        length = int(length)
        if length not in self._built:
            graph, info = read_graph(self.path, length=length)
            if not self.allow_nonfinite:
                check_finite_weights(graph, self.path)
            self._built[length] = _model(graph, self.path, info)
        return self._built[length]

    def specialize(self, x: Any) -> Model:
        arrays = list(x.values()) if isinstance(x, dict) else x
        if not isinstance(arrays, (list, tuple)):
            arrays = [arrays]
        for spec, arr in zip(self._inputs, arrays):
            dims = spec.shape
            shape = np.shape(arr)
            if None in dims and len(shape) == len(dims) + 1:
                return self.with_length(shape[1 + dims.index(None)])
        raise InputError(
            f"cannot tell the sequence length of the arrays given to '{self.path}' "
            f"(inputs {[(s.name, s.shape) for s in self._inputs]}); use "
            "model.with_length(L)"
        )

    def predict(self, x: Any, **kwargs) -> list[np.ndarray]:
        return self.specialize(x).predict(x, **kwargs)

    def summary(self) -> str:
        return (
            f"Model: {os.path.basename(self.path)} (ONNX; its graph is built once "
            "the sequence length is known: pass sequences, or use with_length(L))\n"
            + "Inputs:  "
            + ", ".join(f"{s.name} {s.shape}" for s in self.inputs)
            + "\nOutputs: "
            + ", ".join(f"{s.name} {s.shape}" for s in self.outputs)
        )
