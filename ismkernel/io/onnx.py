"""ONNX models (as ``torch.onnx.export`` writes them), read into the IR.

Needs the ``onnx`` package (the ``onnx`` extra); it only parses the protobuf,
nothing in the file is executed.

Layout. PyTorch's sequence tensors are channels-first, ``(N, C, L)``; the IR's
are ``(L, C)`` per sample. Every ONNX value is held as an IR node plus a
permutation ``perm``: ONNX per-sample axis ``i`` is IR axis ``perm[i]``, so the
ONNX value is ``ir.transpose(perm)``; a ``None`` entry is an axis of size 1 the
IR array does not have (``unsqueeze``). ``Transpose``, ``Unsqueeze`` and most
``Squeeze`` and ``Reshape`` nodes only change ``perm``;
``Conv`` and pooling require the channels-first view of an IR sequence tensor.
A model input's own layout is not written in the file: the importer tries the
layout where the 4-row axis holds channels first, then the other, and keeps the
first under which every node fits. The model then takes and returns arrays in
the ONNX (PyTorch) layout; :class:`~ismkernel.model.Model` transposes at the
boundary.

Spellings. Exporters write one operation many ways; handlers recognise what a
node computes, not how it is written. A crop is a Slice (negative, clamped or
INT32/INT64_MAX ends, any step that keeps rows in order), a Pad with negative
pads (in any mode), or a Gather of a run of rows; a flatten is Flatten (any
axis with only size-1 axes before it), or a Reshape to one axis of size > 1
beside any number of size-1 axes, after a Transpose or not; a dense layer is
Gemm, MatMul with the matrix on either side, or an Einsum contracting the
channels with a constant matrix; Max/Min with a scalar are clips, Expand and
Tile are concatenations of copies; a vector with a size-1 axis is a sequence
of length 1 or of one channel. Attention and recurrence are recognised by what
they compute, a product of two tensors both computed from the model input or
a recurrent op, and refused before anything else is reported.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np

from ismkernel.errors import (
    IsmkernelWarning,
    ModelFileError,
    ShapeError,
    UnsupportedLayerError,
)
from ismkernel.io.transposed import transposed_geometry, transposed_ops
from ismkernel.ir import Graph, Node
from ismkernel.ir import nodes as ops

__all__ = ["read_onnx", "SUPPORTED_OPS", "looks_like_onnx", "NeedsLength"]

_CF = (1, 0)  # channels-first view of an IR (L, C) tensor
# Slice ends at or past this mean "to the end": PyTorch writes INT64_MAX,
# other exporters INT32_MAX.
_TO_END = 2**31 - 1
_FLOAT_TYPES = {1: "FLOAT", 10: "FLOAT16", 11: "DOUBLE", 16: "BFLOAT16"}


def looks_like_onnx(head: bytes) -> bool:
    """Whether the first bytes could start an ONNX ``ModelProto``.

    A serialised ModelProto starts with field 1 (``ir_version``, a varint,
    tag ``0x08``) in every exporter's output.
    """
    return head[:1] == b"\x08"


class NeedsLength(UnsupportedLayerError):
    """The graph computes with a sequence length the file leaves free."""


class _LayoutMismatch(UnsupportedLayerError):
    """A node needs another layout of its input than the one guessed."""


@dataclass(frozen=True)
class _Value:
    node: str  # IR node name
    perm: tuple[int | None, ...]  # ONNX per-sample axis i is IR axis perm[i]

    @property
    def real(self) -> tuple[int, ...]:
        """The IR axes, in ONNX order."""
        return tuple(j for j in self.perm if j is not None)


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def _attrs(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        out[a.name] = value
    return out


class _Importer:
    def __init__(
        self,
        model,
        path: str,
        input_perms: dict[str, tuple[int, ...]],
        length: int | None = None,
    ):
        from onnx import numpy_helper

        self.model = model
        self.path = path
        self.numpy_helper = numpy_helper
        self.graph = Graph()
        self.consts: dict[str, np.ndarray] = {}
        self.values: dict[str, _Value] = {}
        self.input_perms = input_perms
        self.length = length
        self.opset = _opset(model)
        self.node = None
        self.node_index = 0
        self.warned: set[str] = set()

    # -- messages --------------------------------------------------------------
    def where(self) -> str:
        n = self.node
        return f"node '{self.node_name()}' ({n.op_type})"

    def node_name(self) -> str:
        n = self.node
        return n.name or (n.output[0] if n.output else f"{n.op_type}_{self.node_index}")

    def unsupported(self, what: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(f"{self.where()} in '{self.path}': {what}")

    def needs_length(self, what: str) -> NeedsLength:
        return NeedsLength(
            f"{self.where()} in '{self.path}': {what}; the model computes with a "
            "sequence length its file leaves free: ismkernel fixes it from the "
            "sequences it is given, or Model.with_length(L) fixes it"
        )

    def layout_error(self, what: str) -> _LayoutMismatch:
        return _LayoutMismatch(f"{self.where()} in '{self.path}': {what}")

    # -- values ----------------------------------------------------------------
    def onnx_shape(self, v: _Value) -> tuple:
        ir = self.graph.nodes[v.node].shape
        return tuple(1 if j is None else ir[j] for j in v.perm)

    def ir_rank(self, v: _Value) -> int:
        return len(self.graph.nodes[v.node].shape)

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name)

    def need_const(self, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise self.unsupported(
                f"its {what} ('{name}') must be a constant (an initializer or a "
                "Constant node), not computed from the model input"
            )
        return self.consts[name]

    def tensor(self, name: str) -> _Value:
        value = self.values.get(name)
        if isinstance(value, _Value):
            return value
        if isinstance(value, _Stack):
            raise self.unsupported(
                f"input '{name}' stacks tensors along a new leading axis "
                "(torch.stack); only a reduction over that axis is supported"
            )
        if isinstance(value, _Repeated):
            raise self.unsupported(
                f"input '{name}' repeats a tensor along a new axis; only merging "
                "the repeats into the length (an upsampling) is supported"
            )
        if value is not None:
            raise self.unsupported(f"input '{name}' is a comparison, not a tensor")
        if name in self.consts:
            raise self.unsupported(
                f"input '{name}' is a constant where ismkernel needs a tensor "
                "computed from the model input"
            )
        raise ModelFileError(
            f"{self.where()} in '{self.path}' reads '{name}', which no earlier "
            "node produces"
        )

    def add(
        self,
        op: ops.Op,
        inputs: list[_Value],
        perm: tuple[int, ...],
        weights: dict | None = None,
        suffix: str = "",
    ) -> _Value:
        name = self.node_name() + suffix
        while name in self.graph.nodes:
            name += "'"
        node = Node(
            name,
            op,
            tuple(v.node for v in inputs),
            {
                k: np.ascontiguousarray(w, dtype=np.float32)
                for k, w in (weights or {}).items()
            },
            layer=self.node_name(),
            layer_class=self.node.op_type,
        )
        try:
            self.graph.add(node)
        except ShapeError as err:
            raise ShapeError(f"{err} (in '{self.path}')") from None
        return _Value(name, perm)

    def ir_const(self, arr: np.ndarray, v: _Value, what: str) -> np.ndarray:
        """An ONNX constant that broadcasts against value ``v``, as an IR array
        of the same per-sample rank, broadcasting against ``v``'s IR node."""
        rank = len(v.perm)
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim == rank + 1:
            if a.shape[0] != 1:
                raise self.unsupported(
                    f"{what} of shape {a.shape} varies along the batch axis"
                )
            a = a[0]
        if a.ndim > rank:
            raise self.unsupported(
                f"{what} of shape {a.shape} has more axes than the tensor "
                f"{(None,) + self.onnx_shape(v)}"
            )
        a = a.reshape((1,) * (rank - a.ndim) + a.shape)
        shape = self.onnx_shape(v)
        for i, (d, s) in enumerate(zip(a.shape, shape)):
            if d != 1 and d != s:
                raise self.unsupported(
                    f"{what} of shape {np.shape(arr)} does not broadcast against the "
                    f"tensor {(None,) + shape} without enlarging it (axis {i + 1})"
                )
        # Drop the axes the IR array lacks (all of size 1), then reorder.
        a = a.reshape([d for d, j in zip(a.shape, v.perm) if j is not None])
        a = a.transpose(_inverse(v.real))
        return a.reshape(a.shape + (1,) * (self.ir_rank(v) - a.ndim))

    def sample_axis(self, axis: int, rank: int) -> int:
        """An ONNX axis (batch included) as a per-sample ONNX axis."""
        a = axis + rank + 1 if axis < 0 else axis
        if a == 0:
            raise self.unsupported("it acts on the batch axis")
        if not 0 < a <= rank:
            raise ModelFileError(
                f"{self.where()} in '{self.path}': axis {axis} is out of range for "
                f"a tensor of rank {rank + 1}"
            )
        return a - 1

    def as_sequence(self, v: _Value) -> _Value:
        """``v`` as an IR ``(L, C)`` sequence when it is a vector the ONNX
        shape reads as one of length 1, ``(N, C, 1)`` (a flatten into the
        channels, as grouped per-unit linear layers are written), or of one
        channel, ``(N, 1, L)``."""
        shape = self.graph.nodes[v.node].shape
        if len(shape) != 1 or v.perm.count(None) != len(v.perm) - 1:
            return v
        n = shape[0]
        if v.perm[0] == 0:  # (C, 1, ...): length 1
            node = self.add(ops.Reshape((1, n)), [v], (), suffix="/sequence")
            return _Value(node.node, (1, 0) + (None,) * (len(v.perm) - 2))
        node = self.add(ops.Reshape((n, 1)), [v], (), suffix="/sequence")
        return _Value(
            node.node, (1,) + tuple(0 if j == 0 else None for j in v.perm[1:])
        )

    def need_sequence(self, v: _Value, what: str, n_spatial: int = 1) -> int:
        """Check that ``v`` is a channels-first sequence for an op with
        ``n_spatial`` spatial axes; return which spatial axis is the length.

        Two spatial axes are accepted when one of them is a size-1 axis the IR
        lacks: ``(N, C, 1, L)`` or ``(N, C, L, 1)``, as 2-D ports of 1-D models
        (Basset's) have them.
        """
        if n_spatial == 1 and v.perm == _CF:
            return 0
        if n_spatial == 2 and v.perm in ((1, None, 0), (1, 0, None)):
            return v.perm.index(0) - 1
        if len(v.perm) == n_spatial + 1 and sorted(v.real) == [0, 1]:
            raise self.layout_error(
                f"{what} reads its input as (batch, channels, length), but that "
                "tensor is channels-last here"
            )
        raise self.unsupported(
            f"{what} needs a (batch, channels, length) tensor"
            + (" with one spatial axis of size 1" if n_spatial == 2 else "")
            + f", got shape {(None,) + self.onnx_shape(v)}"
        )

    # -- the walk --------------------------------------------------------------
    def run(self) -> Graph:
        g = self.model.graph
        for init in g.initializer:
            self.consts[init.name] = self._array(init)
        init_names = set(self.consts)
        for inp in g.input:
            if inp.name in init_names:
                continue
            self._add_input(inp)
        live = _live_nodes(g)
        # Values some node or the graph reads (an extra output must not be).
        self.read_names = {i for n in g.node for i in n.input} | {
            o.name for o in g.output
        }
        self._check_local(live)
        for self.node_index, self.node in enumerate(g.node):
            if self.node_index in live:
                self._check_known()  # the root cause first, before any other error
        for self.node_index, self.node in enumerate(g.node):
            if self.node_index in live:
                self._convert()
        self.node = None
        for out in g.output:
            if out.name not in self.values:
                raise UnsupportedLayerError(
                    f"output '{out.name}' of '{self.path}' is a constant, not "
                    "computed from the model input"
                )
            v = self.values[out.name]
            self.graph.outputs.append(v.node)
            self.graph.output_names.append(out.name)
            self.output_perms.append(v.perm)
        return self.graph.finalize()

    def _array(self, tensor) -> np.ndarray:
        arr = self.numpy_helper.to_array(tensor)
        if arr.dtype in (np.float16, np.float64) or arr.dtype.name == "bfloat16":
            if arr.dtype != np.float64 and "dtype" not in self.warned:
                self.warned.add("dtype")
                warnings.warn(
                    f"'{self.path}' stores {arr.dtype} constants; ismkernel computes in "
                    "float32, so results will differ from a reduced-precision run",
                    IsmkernelWarning,
                    stacklevel=4,
                )
            arr = arr.astype(np.float32)
        return arr

    def _add_input(self, inp) -> None:
        tt = inp.type.tensor_type
        if not inp.type.HasField("tensor_type"):
            raise UnsupportedLayerError(
                f"input '{inp.name}' of '{self.path}' is not a tensor"
            )
        if tt.elem_type not in _FLOAT_TYPES:
            raise UnsupportedLayerError(
                f"input '{inp.name}' of '{self.path}' has ONNX element type "
                f"{tt.elem_type}; ismkernel takes floating-point inputs"
            )
        dims = _dims(inp)
        perm = self.input_perms.get(inp.name)
        if perm is None:
            if len(dims) != 2:
                raise UnsupportedLayerError(
                    f"input '{inp.name}' of '{self.path}' has rank {len(dims)} "
                    f"(shape {dims}); ismkernel takes (batch, features) inputs and "
                    "sequences (batch, channels, length), (batch, length, channels) "
                    "or, with a size-1 axis, (batch, channels, 1, length)"
                )
            perm = (0,)
        shape = tuple(dims[1:])
        if self.length is not None and 0 in perm and shape[perm.index(0)] is None:
            # A free sequence length, fixed for this import.
            shape = tuple(self.length if j == 0 else d for d, j in zip(shape, perm))
        ir_shape = [0] * len([j for j in perm if j is not None])
        for d, j in zip(shape, perm):
            if j is not None:
                ir_shape[j] = d
        ir_shape = tuple(ir_shape)
        node = Node(inp.name, ops.Input(ir_shape), layer=inp.name, layer_class="Input")
        self.graph.add(node)
        self.graph.inputs.append(inp.name)
        self.values[inp.name] = _Value(inp.name, perm)

    def _check_local(self, live: set[int]) -> None:
        """Refuse recurrence and attention by meaning, before anything else
        about the model is reported: a recurrent op, or a product of two
        tensors both computed from the model input (queries times keys,
        attention weights times values), whatever op spells it."""
        g = self.model.graph
        # Values computed from the model input; a Shape of one is not.
        data = {i.name for i in g.input if i.name not in self.consts}
        for self.node_index, self.node in enumerate(g.node):
            n = self.node
            fed = [i for i in n.input if i in data]
            # Gemm's third input is an added bias, not a factor.
            factors = n.input if n.op_type == "Einsum" else n.input[:2]
            if self.node_index in live:
                if n.op_type in _RECURRENT:
                    raise self.unsupported(
                        f"{n.op_type} is a recurrent layer: each output position "
                        "depends on the whole sequence through its state. " + _NOT_LOCAL
                    )
                if n.op_type in _ATTENTION or (
                    n.op_type in _PRODUCTS and sum(i in data for i in factors) >= 2
                ):
                    raise self.unsupported(
                        "it multiplies two tensors computed from the model input "
                        "(attention): every output position then depends on every "
                        "input position through weights computed from the sequence. "
                        + _NOT_LOCAL
                    )
            if fed and n.op_type not in ("Shape", "Size"):
                data.update(o for o in n.output if o)

    def _check_known(self) -> None:
        n = self.node
        if n.domain not in ("", "ai.onnx"):
            raise self.unsupported(
                f"operators of domain '{n.domain}' are not supported; "
                f"supported: {', '.join(SUPPORTED_OPS)}"
            )
        if n.op_type not in _HANDLERS and n.op_type not in _FOLD:
            raise self.unsupported(
                f"op type {n.op_type} is not supported; supported: "
                f"{', '.join(SUPPORTED_OPS)}"
            )

    def _convert(self) -> None:
        n = self.node
        inputs = list(n.input)
        present = [i for i in inputs if i]
        if present and all(i in self.consts for i in present) and n.op_type in _FOLD:
            self._fold(inputs)
            return
        if n.op_type not in _HANDLERS:
            raise self.unsupported(
                f"{n.op_type} is supported only on constants, not on tensors "
                "computed from the model input"
            )
        result = _HANDLERS[n.op_type](self, inputs, _attrs(n))
        if not isinstance(result, (list, tuple)):
            result = [result]
        for name, value in zip(n.output, result):
            if isinstance(value, np.ndarray):
                self.consts[name] = value
            else:
                self.values[name] = value
        for extra in n.output[len(result) :]:
            if extra and extra in self.read_names:
                raise self.unsupported(f"its output '{extra}' is used but unsupported")

    def _fold(self, inputs: list[str]) -> None:
        n = self.node
        xs = [self.consts[i] if i else None for i in inputs]
        out = _FOLD[n.op_type](self, xs, _attrs(n))
        for name, value in zip(n.output, out if isinstance(out, list) else [out]):
            self.consts[name] = np.asarray(value)


_RECURRENT = ("LSTM", "GRU", "RNN", "Scan", "Loop")
_ATTENTION = ("Attention", "MultiHeadAttention", "GroupQueryAttention")
_PRODUCTS = ("MatMul", "Einsum", "Gemm")
_NOT_LOCAL = (
    "ismkernel computes neither attention nor recurrence and refuses the model "
    "rather than approximate it; compute its ISM in its own framework (one "
    "forward pass per mutant), or export the convolutional part before this "
    "node as its own model"
)


def _live_nodes(graph) -> set[int]:
    """Indices of the nodes the graph outputs depend on; the others (an
    unused second output's computation, say) are never converted."""
    producer = {}
    for i, n in enumerate(graph.node):
        for o in n.output:
            producer[o] = i
    live: set[int] = set()
    stack = [producer[o.name] for o in graph.output if o.name in producer]
    while stack:
        i = stack.pop()
        if i in live:
            continue
        live.add(i)
        stack.extend(producer[v] for v in graph.node[i].input if v in producer)
    return live


def _opset(model) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


# --- handlers: (importer, input names, attributes) -> values ---------------------

_HANDLERS: dict = {}
_FOLD: dict = {}


def _handles(*names):
    def register(fn):
        for name in names:
            _HANDLERS[name] = fn
        return fn

    return register


def _folds(*names):
    def register(fn):
        for name in names:
            _FOLD[name] = fn
        return fn

    return register


def _pair(values, default) -> tuple[int, int]:
    values = list(values) if values is not None else [default, default]
    return int(values[0]), int(values[1])


def _single(
    imp: _Importer,
    attrs: dict,
    key: str,
    default: int,
    n: int = 1,
    axis: int = 0,
    other: int | None = 1,
) -> int:
    """The value of a per-spatial-axis attribute on the length axis ``axis``
    of ``n``; on the other axis (of size 1) it must be ``other`` (``None``:
    anything, as a dilation across a kernel of 1)."""
    value = attrs.get(key)
    if value is None:
        return default
    if len(value) != n or any(
        other is not None and int(v) != other for i, v in enumerate(value) if i != axis
    ):
        raise imp.unsupported(
            f"{key}={list(value)}: only 1-D ops along the length axis are supported"
        )
    return int(value[axis])


def _explicit_pads(
    imp: _Importer,
    attrs: dict,
    length,
    span: int,
    stride: int,
    n: int = 1,
    axis: int = 0,
):
    """Left and right padding from ``pads`` / ``auto_pad``."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto == "VALID":
        return 0, 0
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if length is None:
            if stride != 1:
                raise imp.needs_length(
                    f"auto_pad={auto} with stride {stride} needs a fixed input length"
                )
            total = span - 1
        else:
            out_len = -(-length // stride)
            total = max((out_len - 1) * stride + span - length, 0)
        small = total // 2
        return (
            (small, total - small) if auto == "SAME_UPPER" else (total - small, small)
        )
    pads = attrs.get("pads")
    if pads is None:
        return 0, 0
    if len(pads) != 2 * n or any(int(p) for i, p in enumerate(pads) if i % n != axis):
        raise imp.unsupported(
            f"pads={list(pads)}: only padding along the length axis is supported"
        )
    return int(pads[axis]), int(pads[n + axis])


def _conv_padding(left: int, right: int, span: int, stride: int):
    if left == right == 0:
        return "valid"
    if stride == 1 and (left, right) == ((span - 1) // 2, span - 1 - (span - 1) // 2):
        return "same"
    if stride == 1 and (left, right) == (span - 1, 0):
        return "causal"
    return (left, right)


def _conv_operands(imp: _Importer, inputs, op_type: str, what: str):
    """A Conv's or ConvTranspose's input as a sequence, its weight as
    ``(out or in channels, channels per group, K)``, the ONNX spatial rank
    and the length axis among the spatial ones: 1-D, or 2-D with the kernel
    of 1 on the size-1 axis."""
    x = imp.tensor(inputs[0])
    w = imp.need_const(inputs[1], "weight")
    if w.ndim not in (3, 4):
        raise imp.unsupported(
            f"weight of shape {w.shape}: only 1-D {what} (or 2-D with a "
            "kernel of 1 on a size-1 axis) is supported"
        )
    n = w.ndim - 2
    x = imp.as_sequence(x)
    axis = imp.need_sequence(x, op_type, n)
    if n == 2:
        if w.shape[2 + 1 - axis] != 1:
            raise imp.unsupported(
                f"weight of shape {w.shape} spans the size-1 axis; only kernels "
                "along the length axis are supported"
            )
        w = w.reshape(w.shape[0], w.shape[1], w.shape[2 + axis])
    return x, w, n, axis


@_handles("Conv")
def _conv(imp: _Importer, inputs, attrs):
    x, w, n, axis = _conv_operands(imp, inputs, "Conv", "convolution")
    n_filters, cin_g, k = w.shape
    stride = _single(imp, attrs, "strides", 1, n, axis)
    dilation = _single(imp, attrs, "dilations", 1, n, axis)
    groups = int(attrs.get("group", 1))
    span = (k - 1) * dilation + 1
    length = imp.onnx_shape(x)[1 + axis]
    left, right = _explicit_pads(imp, attrs, length, span, stride, n, axis)
    if left < 0 or right < 0:
        raise imp.unsupported(f"negative pads ({left}, {right}) are not supported")
    bias = None
    if len(inputs) > 2 and inputs[2]:
        bias = imp.need_const(inputs[2], "bias").reshape(-1)
    op = ops.Conv1D(
        n_filters=int(n_filters),
        kernel_size=int(k),
        stride=stride,
        dilation=dilation,
        padding=_conv_padding(left, right, span, stride),
        groups=groups,
        use_bias=bias is not None,
    )
    weights = {"kernel": w.transpose(2, 1, 0)}
    if bias is not None:
        weights["bias"] = bias
    return imp.add(op, [x], x.perm, weights)


@_handles("ConvTranspose")
def _conv_transpose(imp: _Importer, inputs, attrs):
    """A ZeroInsert1D (stride > 1), a Crop1D where the padding is negative
    and a Conv1D with the kernel reversed (``ismkernel.io.transposed``); pads
    and ``output_shape`` as the ONNX specification and its reference
    implementation define them (SAME_UPPER puts the odd extra pad at the end)."""
    x, w, n, axis = _conv_operands(
        imp, inputs, "ConvTranspose", "transposed convolution"
    )
    n_channels, filters_per_group, k = (int(d) for d in w.shape)
    kernel_shape = attrs.get("kernel_shape")
    if kernel_shape is not None and [int(v) for v in kernel_shape][axis] != k:
        raise ModelFileError(
            f"{imp.where()} in '{imp.path}': kernel_shape={list(kernel_shape)} does "
            f"not match its weight of shape {w.shape}"
        )
    groups = int(attrs.get("group", 1))
    shape = imp.onnx_shape(x)
    if groups < 1 or n_channels % groups or shape[0] != n_channels:
        raise ShapeError(
            f"{imp.where()} in '{imp.path}': a weight of shape {w.shape} in "
            f"{groups} group(s) does not fit an input of {shape[0]} channels"
        )
    stride = _single(imp, attrs, "strides", 1, n, axis)
    # The kernel is 1 across the size-1 axis: a dilation there changes nothing
    # (Keras 2 writes a 2-D dilation as (d, d)).
    dilation = _single(imp, attrs, "dilations", 1, n, axis, other=None)
    out_pad = _single(imp, attrs, "output_padding", 0, n, axis, other=0)
    span = (k - 1) * dilation + 1
    length = shape[1 + axis]
    auto = attrs.get("auto_pad", "NOTSET")
    output_shape = attrs.get("output_shape")
    if output_shape is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
        if output_shape is not None:
            out_len = _single(imp, attrs, "output_shape", 0, n, axis)
            if length is None:
                raise imp.needs_length("output_shape fixes the output length")
            total = stride * (length - 1) + out_pad + span - out_len
        else:  # the output is length * stride rows
            total = out_pad + span - stride
        small = total // 2
        pad_left = small if auto == "SAME_UPPER" else total - small
        pads = (pad_left, total - pad_left)
    elif auto == "VALID":
        pads = (0, 0)
    elif auto == "NOTSET":
        pads = _explicit_pads(imp, attrs, length, span, stride, n, axis)
    else:
        raise imp.unsupported(f"auto_pad={auto!r} is not an ONNX padding mode")
    bias = None
    if len(inputs) > 2 and inputs[2]:
        bias = imp.need_const(inputs[2], "bias").reshape(-1)
    n_filters = filters_per_group * groups
    # ONNX keeps (n_channels, n_filters // groups, taps); the convolution reads
    # the taps in reverse as (taps, n_channels // groups, n_filters), group by
    # group.
    kernel = (
        w.reshape(groups, n_channels // groups, filters_per_group, k)
        .transpose(3, 1, 0, 2)
        .reshape(k, n_channels // groups, n_filters)[::-1]
    )
    weights = {"kernel": kernel}
    if bias is not None:
        weights["bias"] = bias
    extra = out_pad + span - pads[0] - pads[1]
    if length is not None and (length - 1) * stride + extra < 1:
        raise imp.unsupported(
            f"its pads {pads} leave no output row for an input of length {length}"
        )
    geometry = transposed_geometry(k, stride, dilation, pads[0], extra, length)
    conv = ops.Conv1D(
        n_filters=n_filters,
        kernel_size=k,
        dilation=dilation,
        groups=groups,
        use_bias=bias is not None,
    )
    for op, suffix in transposed_ops(geometry, conv):
        w_op = weights if isinstance(op, ops.Conv1D) else None
        x = imp.add(op, [x], x.perm, w_op, suffix=suffix)
    return x


@_handles("MaxPool", "AveragePool")
def _pool(imp: _Importer, inputs, attrs):
    x = imp.tensor(inputs[0])
    is_max = imp.node.op_type == "MaxPool"
    n = len(attrs.get("kernel_shape", [1]))
    x = imp.as_sequence(x)
    axis = imp.need_sequence(x, imp.node.op_type, n)
    size = _single(imp, attrs, "kernel_shape", 1, n, axis)
    stride = _single(imp, attrs, "strides", 1, n, axis)
    if _single(imp, attrs, "dilations", 1, n, axis) != 1:
        raise imp.unsupported("pooling with dilation is not supported")
    if attrs.get("storage_order", 0):
        raise imp.unsupported("storage_order=1 is not supported")
    length = imp.onnx_shape(x)[1 + axis]
    left, right = _explicit_pads(imp, attrs, length, size, stride, n, axis)
    extra = 0
    if attrs.get("ceil_mode", 0):
        if length is None:
            raise imp.needs_length("ceil_mode=1 needs a fixed input length")
        padded = length + left + right
        out_len = -(-(padded - size) // stride) + 1
        if (
            out_len - 1
        ) * stride >= length + left:  # a window may not start in the right padding
            out_len -= 1
        extra = max(0, (out_len - 1) * stride + size - padded)
    if not is_max and attrs.get("count_include_pad", 0) and (left or right):
        pad = imp.add(ops.ZeroPad1D(left, right), [x], x.perm, suffix="/pad")
        x, left, right = pad, 0, 0
    right += extra
    padding = "valid" if left == right == 0 else (left, right)
    op = ops.Pool1D("max" if is_max else "average", size, stride, padding)
    return imp.add(op, [x], x.perm)


@_handles("BatchNormalization")
def _batch_norm(imp: _Importer, inputs, attrs):
    x = imp.tensor(inputs[0])
    if attrs.get("training_mode", 0):
        raise imp.unsupported("training_mode=1 is not supported (export in eval mode)")
    scale, bias, mean, var = (
        imp.need_const(i, w).astype(np.float64)
        for i, w in zip(inputs[1:5], ("scale", "bias", "mean", "variance"))
    )
    eps = float(attrs.get("epsilon", 1e-5))
    inv = scale / np.sqrt(var + eps)
    shift = bias - mean * inv
    rank = len(x.perm)
    shape = (-1,) + (1,) * (rank - 1)
    weights = {
        "scale": imp.ir_const(inv.reshape(shape), x, "scale"),
        "shift": imp.ir_const(shift.reshape(shape), x, "bias"),
    }
    axis = -1 if x.perm[0] is None else x.perm[0]
    return imp.add(ops.ChannelAffine(axis=axis), [x], x.perm, weights)


def _activation(fn: str, **fixed):
    def handler(imp: _Importer, inputs, attrs):
        x = imp.tensor(inputs[0])
        return imp.add(ops.Activation(fn, **fixed), [x], x.perm)

    return handler


for _name, _fn in {
    "Relu": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Softplus": "softplus",
    "Softsign": "softsign",
    "Exp": "exponential",
    "Erf": "erf",
    "Log": "log",
    "Abs": "abs",
    "Reciprocal": "reciprocal",
    "Sqrt": "sqrt",
    "Mish": "mish",
}.items():
    _HANDLERS[_name] = _activation(_fn)


@_handles("LeakyRelu")
def _leaky_relu(imp, inputs, attrs):
    x = imp.tensor(inputs[0])
    slope = float(attrs.get("alpha", 0.01))
    return imp.add(ops.Activation("relu", negative_slope=slope), [x], x.perm)


@_handles("Elu", "Celu")
def _elu(imp, inputs, attrs):
    x = imp.tensor(inputs[0])
    fn = imp.node.op_type.lower()
    return imp.add(
        ops.Activation(fn, alpha=float(attrs.get("alpha", 1.0))), [x], x.perm
    )


@_handles("Selu")
def _selu(imp, inputs, attrs):
    x = imp.tensor(inputs[0])
    alpha = float(attrs.get("alpha", 1.67326319217681884765625))
    gamma = float(attrs.get("gamma", 1.05070102214813232421875))
    if not (
        math.isclose(alpha, 1.6732632, rel_tol=1e-6)
        and math.isclose(gamma, 1.0507010, rel_tol=1e-6)
    ):
        raise imp.unsupported(
            f"Selu with alpha={alpha}, gamma={gamma}: only the standard constants "
            "are supported"
        )
    return imp.add(ops.Activation("selu"), [x], x.perm)


@_handles("Gelu")
def _gelu(imp, inputs, attrs):
    x = imp.tensor(inputs[0])
    approx = attrs.get("approximate", "none")
    if approx not in ("none", "tanh"):
        raise imp.unsupported(f"Gelu approximate={approx!r} is not supported")
    return imp.add(ops.Activation("gelu", approximate=approx == "tanh"), [x], x.perm)


@_handles("HardSigmoid", "HardSwish")
def _hard_sigmoid(imp, inputs, attrs):
    x = imp.tensor(inputs[0])
    if imp.node.op_type == "HardSwish":
        return imp.add(ops.Activation("hard_silu", alpha=1 / 6), [x], x.perm)
    alpha = float(attrs.get("alpha", 0.2))
    beta = float(attrs.get("beta", 0.5))
    if beta != 0.5 or not (
        math.isclose(alpha, 0.2, rel_tol=1e-6)
        or math.isclose(alpha, 1 / 6, rel_tol=1e-6)
    ):
        raise imp.unsupported(
            f"HardSigmoid with alpha={alpha}, beta={beta}: only (0.2, 0.5) and "
            "(1/6, 0.5) are supported"
        )
    alpha = 0.2 if math.isclose(alpha, 0.2, rel_tol=1e-6) else 1 / 6
    return imp.add(ops.Activation("hard_sigmoid", alpha=alpha), [x], x.perm)


@_handles("Clip")
def _clip(imp, inputs, attrs):
    x = imp.tensor(inputs[0])
    if imp.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        lo = (
            float(imp.need_const(inputs[1], "min"))
            if len(inputs) > 1 and inputs[1]
            else None
        )
        hi = (
            float(imp.need_const(inputs[2], "max"))
            if len(inputs) > 2 and inputs[2]
            else None
        )
    if lo == 0:
        return imp.add(ops.Activation("relu", max_value=hi), [x], x.perm)
    if lo == -1 and hi == 1:
        return imp.add(ops.Activation("hard_tanh"), [x], x.perm)
    if lo is not None and hi is not None and lo > hi:
        raise imp.unsupported(f"Clip to [{lo}, {hi}]: the bounds are reversed")
    op = ops.Activation(
        "clip",
        threshold=-math.inf if lo is None else lo,
        max_value=math.inf if hi is None else hi,
    )
    return imp.add(op, [x], x.perm)


@_handles("Pow")
def _pow(imp, inputs, attrs):
    x = imp.tensor(inputs[0])
    e = imp.need_const(inputs[1], "exponent")
    if e.size == 1 and float(e.reshape(-1)[0]) == 2.0:
        return imp.add(ops.Merge("multiply"), [x, x], x.perm)
    if e.size == 1 and float(e.reshape(-1)[0]) == 0.5:
        return imp.add(ops.Activation("sqrt"), [x], x.perm)
    if e.size == 1 and float(e.reshape(-1)[0]) == 1.0:
        return x
    raise imp.unsupported(
        f"Pow with exponent {e.tolist()}: only 2, 0.5 and 1 are supported"
    )


@_handles("Erfc")
def _erfc(imp, inputs, attrs):
    """``1 - erf(x)``. ONNX has no Erfc; tf2onnx leaves TensorFlow's, with
    which Keras computes its exact GELU, in the file as it is. ``1 - erf``
    loses erfc's relative precision only where erf(x) rounds to 1, below
    float32's absolute rounding."""
    x = imp.tensor(inputs[0])
    erf = imp.add(ops.Activation("erf"), [x], x.perm, suffix="/erf")
    one = np.ones((1,) * imp.ir_rank(x))
    weights = {"scale": -one, "shift": one}
    return imp.add(ops.ChannelAffine(), [erf], x.perm, weights)


@_handles("Neg")
def _neg(imp, inputs, attrs):
    x = imp.tensor(inputs[0])
    one = np.ones((1,) * imp.ir_rank(x))
    weights = {"scale": -one, "shift": 0 * one}
    return imp.add(ops.ChannelAffine(), [x], x.perm, weights)


@dataclass(frozen=True)
class _Greater:
    """``x > threshold``: kept only to recognise PyTorch's Softplus threshold."""

    x: str
    threshold: float


@_handles("Greater")
def _greater(imp, inputs, attrs):
    imp.tensor(inputs[0])
    c = imp.need_const(inputs[1], "threshold")
    if c.size != 1:
        raise imp.unsupported("comparisons are supported only with a scalar")
    return _Greater(inputs[0], float(c.reshape(-1)[0]))


@_handles("Where")
def _where(imp, inputs, attrs):
    cond = imp.values.get(inputs[0])
    if isinstance(cond, _Greater) and inputs[1] == cond.x:
        x = imp.tensor(cond.x)
        other = imp.tensor(inputs[2])
        node = imp.graph.nodes[other.node]
        t = np.float32(cond.threshold)
        if (
            isinstance(node.op, ops.Activation)
            and node.op.fn == "softplus"
            and node.inputs == (x.node,)
            and other.perm == x.perm
            and np.logaddexp(np.float32(0), t) == t
        ):
            # where(x > t, x, softplus(x)): softplus(x) already rounds to x
            # in float32 above t, so the select changes nothing.
            return other
    raise imp.unsupported(
        "Where is supported only as PyTorch's Softplus threshold, "
        "where(x > t, x, softplus(x))"
    )


@_handles("Softmax", "LogSoftmax")
def _softmax(imp, inputs, attrs):
    x = imp.tensor(inputs[0])
    rank = len(x.perm)
    default = -1 if imp.opset >= 13 else 1
    axis = imp.sample_axis(int(attrs.get("axis", default)), rank)
    if imp.opset < 13 and axis != rank - 1:
        raise imp.unsupported(
            f"opset {imp.opset} {imp.node.op_type} over axis {axis + 1} flattens the "
            "trailing axes; only the last axis is supported before opset 13"
        )
    fn = "softmax" if imp.node.op_type == "Softmax" else "log_softmax"
    if x.perm[axis] is None:
        raise imp.unsupported(f"{imp.node.op_type} over an axis of size 1")
    return imp.add(ops.Activation(fn, axis=x.perm[axis]), [x], x.perm)


@_handles("PRelu")
def _prelu(imp, inputs, attrs):
    x = imp.tensor(inputs[0])
    slope = imp.need_const(inputs[1], "slope")
    alpha = imp.ir_const(slope, x, "slope")
    return imp.add(ops.PReLU(), [x], x.perm, {"alpha": alpha})


_BINARY = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Div": "divide"}


@_handles("Add", "Sub", "Mul", "Div")
def _binary(imp: _Importer, inputs, attrs):
    kind = imp.node.op_type
    a, b = inputs[0], inputs[1]
    if a in imp.consts or b in imp.consts:
        const_first = a in imp.consts
        x = imp.tensor(b if const_first else a)
        x = _enlarge(imp, x, imp.consts[a if const_first else b])
        c = imp.ir_const(imp.consts[a if const_first else b], x, "constant")
        rank = imp.ir_rank(x)
        one, zero = np.ones((1,) * rank), np.zeros((1,) * rank)
        if kind == "Add":
            scale, shift = one, c
        elif kind == "Sub":
            scale, shift = (-one, c) if const_first else (one, -c)
        elif kind == "Mul":
            scale, shift = c, zero
        elif const_first:  # c / x
            x = imp.add(ops.Activation("reciprocal"), [x], x.perm, suffix="/reciprocal")
            if np.all(c == 1):
                return x
            scale, shift = c, zero
        else:
            scale, shift = 1.0 / c, zero
        weights = {"scale": scale, "shift": shift}
        return imp.add(ops.ChannelAffine(axis=-1), [x], x.perm, weights)
    return _merge(imp, [imp.tensor(a), imp.tensor(b)], _BINARY[kind])


def _enlarge(imp: _Importer, x: _Value, c: np.ndarray) -> _Value:
    """``x`` repeated along its size-1 IR axes that a constant it meets
    broadcasts to more (a per-position scale of shape (N, L, 1) times a
    per-channel one of shape (C,)): a concatenation of copies."""
    shape = imp.onnx_shape(x)
    dims = np.shape(c)[-len(shape) :] if len(shape) else ()
    dims = (1,) * (len(shape) - len(dims)) + tuple(dims)
    out = x
    for axis, (d, n) in enumerate(zip(shape, dims)):
        if d == 1 and n > 1 and x.perm[axis] is not None:
            op = ops.Concatenate(axis=x.perm[axis])
            out = imp.add(op, [out] * n, out.perm, suffix=f"/broadcast{axis}")
    return out


def _merge(imp: _Importer, xs: list[_Value], mode: str) -> _Value:
    """An element-wise merge of tensors, in the layout of the largest."""
    if len({len(v.perm) for v in xs}) != 1:
        shapes = ", ".join(str((None,) + imp.onnx_shape(v)) for v in xs)
        raise imp.unsupported(f"its inputs have different ranks ({shapes})")
    sizes = [math.prod(d or 0 for d in imp.onnx_shape(v)) for v in xs]
    like = xs[sizes.index(max(sizes))]
    # Bring the ones with fewer values into its layout, when only size-1 axes
    # differ (a gate of shape (C, 1) against (C, L)).
    xs = [v if v.perm == like.perm else _align(imp, v, like) for v in xs]
    return imp.add(ops.Merge(mode), xs, like.perm)


@_handles("Max", "Min", "Sum", "Mean")
def _variadic(imp: _Importer, inputs, attrs):
    """ONNX's n-ary element-wise ops; a scalar bound in Max or Min is a clip
    (``Max(x, 0)`` is a ReLU)."""
    kind = imp.node.op_type
    names = [i for i in inputs if i]
    consts = [imp.consts[i] for i in names if i in imp.consts]
    xs = [imp.tensor(i) for i in names if i not in imp.consts]
    if consts:
        if kind not in ("Max", "Min") or any(c.size != 1 for c in consts):
            raise imp.unsupported(
                f"{kind} of a tensor and a constant: only a scalar bound in Max or "
                "Min is supported"
            )
        bound = (max if kind == "Max" else min)(float(c.reshape(-1)[0]) for c in consts)
        x, suffix = xs[0], ""
        if len(xs) > 1:
            x, suffix = _merge(imp, xs, _VARIADIC[kind]), "/bound"
        if kind == "Max" and bound == 0:
            op = ops.Activation("relu")
        else:
            lo, hi = (bound, math.inf) if kind == "Max" else (-math.inf, bound)
            op = ops.Activation("clip", threshold=lo, max_value=hi)
        return imp.add(op, [x], x.perm, suffix=suffix)
    if len(xs) == 1:
        return xs[0]
    return _merge(imp, xs, _VARIADIC[kind])


_VARIADIC = {"Max": "maximum", "Min": "minimum", "Sum": "add", "Mean": "average"}


def _align(imp: _Importer, v: _Value, like: _Value) -> _Value:
    """``v`` reshaped into ``like``'s layout, when that moves no values."""
    shape = imp.onnx_shape(v)
    if any(j is None and d != 1 for j, d in zip(like.perm, shape)):
        raise imp.layout_error("its two inputs are in different layouts")
    ir_shape = [1] * imp.ir_rank(like)
    for j, d in zip(like.perm, shape):
        if j is not None:
            ir_shape[j] = d
    if sum(d != 1 for d in shape) > 1:
        raise imp.layout_error("its two inputs are in different layouts")
    node = imp.add(ops.Reshape(tuple(ir_shape)), [v], like.perm, suffix="/align")
    return node


@_handles("Concat")
def _concat(imp: _Importer, inputs, attrs):
    stacks = [imp.values.get(i) for i in inputs]
    if all(isinstance(s, _Stack) for s in stacks) and int(attrs["axis"]) == 0:
        members = tuple(v for s in stacks for v in s.values)
        shapes = {imp.onnx_shape(v) for v in members}
        if len(shapes) != 1 or len({v.perm for v in members}) != 1:
            raise imp.unsupported("it stacks tensors of different shapes or layouts")
        return _Stack(members)
    xs = [imp.tensor(i) for i in inputs]
    rank = len(xs[0].perm)
    if any(len(v.perm) != rank for v in xs):
        raise imp.unsupported("its inputs have different ranks")
    if any(v.perm != xs[0].perm for v in xs):
        raise imp.layout_error("its inputs are in different layouts")
    axis = imp.sample_axis(int(attrs["axis"]), rank)
    if len(xs) == 1:
        return xs[0]
    if xs[0].perm[axis] is None:
        raise imp.unsupported(
            f"concatenating along axis {axis + 1}, which the IR lacks"
        )
    return imp.add(ops.Concatenate(axis=xs[0].perm[axis]), xs, xs[0].perm)


def _slice_params(imp: _Importer, inputs, attrs):
    if imp.opset < 10:
        starts, ends = attrs["starts"], attrs["ends"]
        axes = attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = imp.need_const(inputs[1], "starts").tolist()
        ends = imp.need_const(inputs[2], "ends").tolist()
        axes = (
            imp.need_const(inputs[3], "axes").tolist()
            if len(inputs) > 3 and inputs[3]
            else list(range(len(starts)))
        )
        steps = (
            imp.need_const(inputs[4], "steps").tolist()
            if len(inputs) > 4 and inputs[4]
            else [1] * len(starts)
        )
    return list(zip(axes, starts, ends, steps))


@_handles("Slice")
def _slice(imp: _Importer, inputs, attrs):
    x = imp.tensor(inputs[0])
    rank = len(x.perm)
    shape = imp.onnx_shape(x)
    crops = {}
    for axis, start, end, step in _slice_params(imp, inputs, attrs):
        a = int(axis) + rank + 1 if axis < 0 else int(axis)
        if a == 0:
            if start == 0 and end >= _TO_END and step == 1:
                continue
            raise imp.unsupported("slicing the batch axis is not supported")
        if not 0 < a <= rank:
            raise ModelFileError(
                f"{imp.where()} in '{imp.path}': axis {axis} is out of range for "
                f"a tensor of rank {rank + 1}"
            )
        crop = _slice_run(imp, shape[a - 1], int(start), int(end), int(step))
        if crop != (0, 0):
            crops[a - 1] = crop
    out = x
    for axis, (first, drop_end) in crops.items():
        suffix = f"/{axis}" if len(crops) > 1 else ""
        out = _cut(imp, out, axis, first, drop_end, suffix)
    return out


def _slice_run(imp: _Importer, n: int | None, start: int, end: int, step: int):
    """``(first, drop_end)``: the rows a Slice keeps, as a crop of an axis of
    ``n`` rows. Ends are clamped as ONNX clamps them; any step that keeps one
    row, or the rows in order, is the same crop."""
    if step == 0:
        raise ModelFileError(f"{imp.where()} in '{imp.path}' has a step of 0")
    if n is None:
        if step != 1:
            raise imp.unsupported(f"Slice with step {step} is not supported")
        if start < 0 or 0 <= end < _TO_END:
            raise imp.needs_length(
                "a Slice of an axis of unknown length needs a fixed input length"
            )
        # Only a start, or a negative end counted from the unknown end.
        return start, (-end if end < 0 else 0)
    # Python's slicing clamps out-of-range starts and ends as ONNX does.
    kept = range(n)[start:end:step]
    if len(kept) == 0:
        raise imp.unsupported(
            f"Slice [{start}:{end}:{step}] of an axis of {n} is empty"
        )
    if len(kept) > 1 and kept.step != 1:
        raise imp.unsupported(f"Slice with step {step} is not supported")
    first, last = min(kept), max(kept)
    return first, n - 1 - last


def _cut(imp: _Importer, x: _Value, axis: int, first: int, drop_end: int, suffix=""):
    """Part of ONNX per-sample ``axis`` of ``x``: a crop on the length axis, a
    channel slice on the IR's last axis."""
    j = x.perm[axis]
    ir = imp.graph.nodes[x.node].shape
    if len(ir) == 2 and j == 0:
        return imp.add(ops.Crop1D(first, drop_end), [x], x.perm, suffix=suffix)
    if j is not None and j == len(ir) - 1 and ir[j] is not None:
        op = ops.ChannelSlice(first, ir[j] - drop_end)
        return imp.add(op, [x], x.perm, suffix=suffix)
    raise imp.unsupported(
        f"slicing axis {axis + 1} of a tensor of shape "
        f"{(None,) + imp.onnx_shape(x)}: only crops along the length axis and "
        "slices of the channels are supported"
    )


@_handles("Gather")
def _gather(imp: _Importer, inputs, attrs):
    """Constant indices that pick one row, or a run of rows in order: a Slice
    (``x[:, :, 3:7]`` written as Gather), and for a scalar index also a
    Squeeze (``x[:, 0]``)."""
    x = imp.tensor(inputs[0])
    index = imp.need_const(inputs[1], "indices")
    rank = len(x.perm)
    axis = imp.sample_axis(int(attrs.get("axis", 0)), rank)
    shape = imp.onnx_shape(x)
    n = shape[axis]
    if n is None:
        raise imp.needs_length("Gather on an axis of unknown length")
    rows = [int(i) + n if i < 0 else int(i) for i in index.reshape(-1)]
    if any(not 0 <= i < n for i in rows):
        raise ModelFileError(
            f"{imp.where()} in '{imp.path}': indices {index.tolist()} are out of "
            f"range for an axis of {n}"
        )
    if not rows or index.ndim > 1 or rows != list(range(rows[0], rows[0] + len(rows))):
        raise imp.unsupported(
            f"Gather of rows {index.tolist()}: only one row or a run of rows in "
            "order is supported"
        )
    out = x
    if len(rows) < n:
        out = _cut(imp, x, axis, rows[0], n - rows[0] - len(rows))
    if index.ndim == 0:
        target = tuple(d for i, d in enumerate(imp.onnx_shape(out)) if i != axis)
        out = _reshape_to(imp, out, target)
    return out


@_handles("Expand", "Tile")
def _repeat(imp: _Importer, inputs, attrs):
    """Copies of a tensor side by side (``x.repeat(1, k, 1)``, ``expand`` of
    a size-1 axis): a concatenation of the copies along that axis."""
    x = imp.tensor(inputs[0])
    arg = [int(d) for d in imp.need_const(inputs[1], "shape or repeats").reshape(-1)]
    src = imp.onnx_shape(x)
    rank = len(src)
    if imp.node.op_type == "Tile":
        if len(arg) != rank + 1:
            raise ModelFileError(
                f"{imp.where()} in '{imp.path}': {len(arg)} repeats for a tensor "
                f"of rank {rank + 1}"
            )
        batch, counts = arg[0], arg[1:]
    else:
        if len(arg) > rank + 1:
            raise imp.unsupported(
                f"expanding {(None,) + src} to {arg} adds axes before the batch"
            )
        arg = [1] * (rank + 1 - len(arg)) + arg
        batch = arg[0]
        counts = []
        for d, t in zip(src, arg[1:]):
            if d != 1 and t not in (1, d):
                raise ShapeError(
                    f"{imp.where()} in '{imp.path}': cannot expand "
                    f"{(None,) + src} to {arg}"
                )
            counts.append(t if d == 1 else 1)
    if batch not in (1, -1):
        raise imp.unsupported("repeating the batch axis is not supported")
    out = x
    grown = [a for a, c in enumerate(counts) if c != 1 and x.perm[a] is None]
    for axis, count in enumerate(counts):
        if count == 1:
            continue
        j = out.perm[axis]
        if j is None and grown == [axis] and axis > 0 and out.perm[axis - 1] == 0:
            continue
        if j is None:
            raise imp.unsupported(
                f"repeating axis {axis + 1} of {(None,) + src}, which the IR lacks; "
                "only axes of the sequence or the channels can be repeated"
            )
        suffix = f"/{axis}" if sum(c != 1 for c in counts) > 1 else ""
        op = ops.Concatenate(axis=j)
        out = imp.add(op, [out] * count, out.perm, suffix=suffix)
    if grown:
        return _Repeated(out, grown[0], counts[grown[0]])
    return out


@_handles("Split")
def _split(imp: _Importer, inputs, attrs):
    x = imp.tensor(inputs[0])
    rank = len(x.perm)
    axis = imp.sample_axis(int(attrs.get("axis", 0)), rank)
    n = imp.onnx_shape(x)[axis]
    if n is None:
        raise imp.needs_length("splitting an axis of unknown length")
    if len(inputs) > 1 and inputs[1]:
        sizes = [int(s) for s in imp.need_const(inputs[1], "split").reshape(-1)]
    elif "split" in attrs:
        sizes = [int(s) for s in attrs["split"]]
    else:
        parts = int(attrs.get("num_outputs", len(imp.node.output)))
        size = -(-n // parts)
        sizes = [min(size, n - i * size) for i in range(parts)]
    if sum(sizes) != n or len(sizes) != len(imp.node.output):
        raise ModelFileError(
            f"{imp.where()} in '{imp.path}': split sizes {sizes} do not divide an "
            f"axis of {n} into {len(imp.node.output)} parts"
        )
    out, first = [], 0
    for i, size in enumerate(sizes):
        out.append(_cut(imp, x, axis, first, n - first - size, suffix=f"/{i}"))
        first += size
    return out


@_handles("Pad")
def _pad(imp: _Importer, inputs, attrs):
    """Zero padding of the length axis; negative pads crop (gReLU's
    ``ConstantPad1d(-n)``), on any axis and in any mode, since what a crop
    keeps does not depend on the fill."""
    x = imp.tensor(inputs[0])
    mode = attrs.get("mode", "constant")
    if imp.opset < 11:
        pads, value = list(attrs["pads"]), float(attrs.get("value", 0.0))
        axes = None
    else:
        pads = imp.need_const(inputs[1], "pads").reshape(-1).tolist()
        value = (
            float(imp.need_const(inputs[2], "constant_value").reshape(-1)[0])
            if len(inputs) > 2 and inputs[2]
            else 0.0
        )
        axes = (
            imp.need_const(inputs[3], "axes").reshape(-1).tolist()
            if len(inputs) > 3 and inputs[3]
            else None
        )
    rank = len(x.perm)
    axes = (
        list(range(rank + 1))
        if axes is None
        else [int(a) + rank + 1 if a < 0 else int(a) for a in axes]
    )
    half = len(pads) // 2
    if half != len(axes) or len(pads) != 2 * half:
        raise ModelFileError(
            f"{imp.where()} in '{imp.path}': {len(pads)} pads for {len(axes)} "
            "axes; ONNX needs two per axis"
        )
    shape = imp.onnx_shape(x)
    cuts, grows = {}, {}
    for a, left, right in zip(axes, pads[:half], pads[half:]):
        left, right = int(left), int(right)
        if left == right == 0:
            continue
        if a == 0:
            raise imp.unsupported("padding or cropping the batch axis is not supported")
        if left < 0 or right < 0:
            cuts[a - 1] = (max(-left, 0), max(-right, 0))
        if left > 0 or right > 0:
            grows[a - 1] = (max(left, 0), max(right, 0))
    if grows and mode != "constant":
        raise imp.unsupported(
            f"Pad mode '{mode}' is not supported (only constant zeros)"
        )
    if grows and value != 0.0:
        raise imp.unsupported(f"padding with {value} is not supported (only zeros)")
    out = x
    for axis, (first, drop_end) in cuts.items():
        n = shape[axis]
        if n is not None and first + drop_end >= n:
            # The crop reaches into the padding added on the other side.
            raise imp.unsupported(
                f"pads {pads} crop all {n} rows of axis {axis + 1} and part of "
                "the padding"
            )
        out = _cut(imp, out, axis, first, drop_end, suffix=f"/crop{axis}")
    for axis, (left, right) in grows.items():
        if imp.ir_rank(out) != 2 or out.perm[axis] != 0:
            raise imp.unsupported(
                f"padding axis {axis + 1} of {(None,) + shape}: only the length "
                "axis of a (batch, channels, length) tensor can be padded"
            )
        out = imp.add(ops.ZeroPad1D(left, right), [out], out.perm)
    return out


def _reshape_to(imp: _Importer, x: _Value, target: tuple[int, ...]) -> _Value:
    src = imp.onnx_shape(x)
    target = tuple(None if t is None else int(t) for t in target)
    if target == tuple(src):
        return x
    ir = imp.graph.nodes[x.node].shape
    if [d for d in src if d != 1] == [d for d in target if d != 1]:
        # Only size-1 axes come and go: a new view of the same IR array.
        big = iter([j for j, d in zip(x.perm, src) if d != 1])
        ones = [j for j in x.real if ir[j] == 1]
        ones += [j for j in range(len(ir)) if ir[j] == 1 and j not in ones]
        perm = []
        for d in target:
            if d != 1:
                perm.append(next(big))
            elif ones:
                perm.append(ones.pop(0))
            else:
                perm.append(None)
        if not ones:
            return _Value(x.node, tuple(perm))
        if len(target) == 1 and len(x.real) == 1:
            return _Value(x.node, (x.real[0],))
        # IR axes of size 1 left over: drop them from the IR array.
        keep = [j for j in range(len(ir)) if j not in ones]
        node = imp.add(
            ops.Reshape(tuple(ir[j] for j in keep)), [x], (), suffix="/squeeze"
        )
        return _Value(
            node.node, tuple(None if j is None else keep.index(j) for j in perm)
        )
    if None in src or None in target:
        raise imp.needs_length(f"reshaping {(None,) + src} needs a fixed input length")
    if math.prod(target) != math.prod(src):
        raise ShapeError(
            f"{imp.where()} in '{imp.path}': cannot reshape {(None,) + src} to "
            f"{(None,) + target}"
        )
    big_target = [d for d in target if d != 1]
    if len(big_target) == 1:
        # A flatten of the whole sample, however many size-1 axes either side
        # has: (N, C, L) -> (N, C*L), (N, 1, C*L) or (N, C*L, 1).
        order = tuple(j for j, d in zip(x.perm, src) if j is not None and ir[j] != 1)
        perm = tuple(0 if d != 1 else None for d in target)
        if len(ir) == 2 and order in ((0, 1), _CF):
            flat = ops.Flatten(channels_first=order == _CF)
            return imp.add(flat, [x], perm)
        if order == tuple(j for j in range(len(ir)) if ir[j] != 1):
            return imp.add(ops.Reshape((big_target[0],)), [x], perm)
    if x.real == tuple(range(len(ir))):
        # The IR array is in ONNX order (size-1 axes aside): a row-major reshape.
        return imp.add(ops.Reshape(target), [x], tuple(range(len(target))))
    big_src = [d for d in src if d != 1]
    if len(ir) == 2 and x.real == _CF and big_target[:1] == big_src[:1]:
        if len(big_target) == 3 and big_target[1] * big_target[2] == big_src[1]:
            raise imp.unsupported(
                f"reshaping {(None,) + src} to {(None,) + target} splits the length "
                f"axis into windows of {big_target[2]} (as attention pooling does); "
                "ismkernel pools windows only with MaxPool and AveragePool"
            )
    raise imp.unsupported(
        f"reshaping {(None,) + src} to {(None,) + target} moves values of a "
        "channels-first tensor; only flattening is supported there"
    )


@_handles("Reshape")
def _reshape(imp: _Importer, inputs, attrs):
    repeated = imp.values.get(inputs[0])
    x = repeated.value if isinstance(repeated, _Repeated) else imp.tensor(inputs[0])
    shape = [int(s) for s in imp.need_const(inputs[1], "shape").reshape(-1)]
    src = repeated.shape(imp) if isinstance(repeated, _Repeated) else imp.onnx_shape(x)
    if len(shape) < 2:
        raise imp.unsupported(f"reshape to {shape} merges the batch axis")
    per = shape[1:]
    if not attrs.get("allowzero", 0):
        per = [src[i] if s == 0 and i < len(src) else s for i, s in enumerate(per)]
    if per.count(-1) > 1:
        raise ModelFileError(f"{imp.where()} in '{imp.path}': shape {shape} has two -1")
    if -1 in per:
        if None in src:
            raise imp.needs_length(
                f"reshaping {(None,) + src} needs a fixed input length"
            )
        known = math.prod(s for s in per if s != -1)
        per[per.index(-1)] = math.prod(src) // known if known else 0
    if isinstance(repeated, _Repeated):
        return _upsample(imp, repeated, src, tuple(per))
    return _reshape_to(imp, x, tuple(per))


def _upsample(imp: _Importer, r: _Repeated, src: tuple, target: tuple) -> _Value:
    """A repeated axis merged into the length before it: every row repeated
    ``count`` times in place."""
    a = r.axis
    merged = src[: a - 1] + (None if src[a - 1] is None else src[a - 1] * r.count,)
    if target != merged + src[a + 1 :]:
        raise imp.unsupported(
            f"reshaping {(None,) + src} (the repeats of a tensor) to "
            f"{(None,) + target}: only merging the repeats into the length, "
            "an upsampling, is supported"
        )
    perm = r.value.perm[:a] + r.value.perm[a + 1 :]
    return imp.add(ops.UpSample1D(r.count), [r.value], perm)


@_handles("Flatten")
def _flatten(imp: _Importer, inputs, attrs):
    """ONNX Flatten makes ``(prod(shape[:axis]), prod(shape[axis:]))``: with
    only size-1 axes between the batch and ``axis``, a flatten per sample."""
    x = imp.tensor(inputs[0])
    src = imp.onnx_shape(x)
    rank = len(src) + 1
    axis = int(attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if axis == 0 or any(d != 1 for d in src[: axis - 1]):
        raise imp.unsupported(
            f"Flatten with axis={attrs.get('axis')} of {(None,) + src} merges the "
            "batch axis with others"
        )
    if None in src:
        raise imp.needs_length(f"flattening {(None,) + src} needs a fixed input length")
    return _reshape_to(imp, x, (math.prod(src),))


def _axes(imp: _Importer, inputs, attrs, position: int = 1) -> list[int] | None:
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(inputs) > position and inputs[position]:
        return [int(a) for a in imp.need_const(inputs[position], "axes").reshape(-1)]
    return None


@dataclass(frozen=True)
class _Repeated:
    """``value`` with a new size-1 axis ``axis`` (right after the length
    axis) repeated ``count`` times: only a Reshape that merges it into the
    length may read it, and that is an upsampling (``repeat_interleave``,
    Keras 3's UpSampling1D)."""

    value: _Value
    axis: int
    count: int

    def shape(self, imp: _Importer) -> tuple:
        shape = list(imp.onnx_shape(self.value))
        shape[self.axis] = self.count
        return tuple(shape)


@dataclass(frozen=True)
class _Stack:
    """Tensors stacked along a new leading axis, before the batch
    (``torch.stack([a, b])``); only a reduction over that axis may read it,
    and it becomes an element-wise combination of the tensors."""

    values: tuple[_Value, ...]


@_handles("Squeeze", "Unsqueeze")
def _squeeze(imp: _Importer, inputs, attrs):
    axes = _axes(imp, inputs, attrs)
    if imp.node.op_type == "Unsqueeze" and axes == [0]:
        return _Stack((imp.tensor(inputs[0]),))
    x = imp.tensor(inputs[0])
    src = list(imp.onnx_shape(x))
    if imp.node.op_type == "Squeeze":
        rank = len(src)
        if axes is None:
            axes = [i + 1 for i, d in enumerate(src) if d == 1]
        per = sorted(imp.sample_axis(a, rank) for a in axes)
        if any(src[a] != 1 for a in per):
            raise ShapeError(
                f"{imp.where()} in '{imp.path}': squeezes an axis of size > 1 in {(None,) + tuple(src)}"
            )
        target = [d for i, d in enumerate(src) if i not in per]
    else:
        if axes is None:
            raise ModelFileError(f"{imp.where()} in '{imp.path}' has no axes")
        rank = len(src) + len(axes)
        per = sorted(imp.sample_axis(a, rank) for a in axes)
        target = list(src)
        for a in per:
            target.insert(a, 1)
    return _reshape_to(imp, x, tuple(target))


@_handles("Transpose")
def _transpose(imp: _Importer, inputs, attrs):
    x = imp.tensor(inputs[0])
    rank = len(x.perm)
    perm = attrs.get("perm", list(range(rank, -1, -1)))
    if len(perm) != rank + 1 or perm[0] != 0:
        raise imp.unsupported(f"Transpose perm={list(perm)} moves the batch axis")
    return _Value(x.node, tuple(x.perm[p - 1] for p in perm[1:]))


@_handles("Gemm")
def _gemm(imp: _Importer, inputs, attrs):
    x = imp.tensor(inputs[0])
    if attrs.get("transA", 0):
        raise imp.unsupported("transA=1 is not supported")
    if len(x.perm) != 1:
        raise imp.unsupported(
            f"input of shape {(None,) + imp.onnx_shape(x)} is not (batch, features)"
        )
    b = imp.need_const(inputs[1], "B").astype(np.float64)
    if attrs.get("transB", 0):
        b = b.T
    kernel = float(attrs.get("alpha", 1.0)) * b
    units = kernel.shape[1]
    weights = {"kernel": kernel}
    if len(inputs) > 2 and inputs[2]:
        c = imp.need_const(inputs[2], "C").astype(np.float64)
        weights["bias"] = float(attrs.get("beta", 1.0)) * np.broadcast_to(
            c, (1, units)
        ).reshape(units)
    op = ops.Dense(units=int(units), use_bias="bias" in weights)
    return imp.add(op, [x], x.perm, weights)


@_handles("MatMul")
def _matmul(imp: _Importer, inputs, attrs):
    """A tensor times a constant matrix: a dense layer on the channels,
    whichever side the matrix is on (``x @ W`` on the last axis, ``W @ x`` on
    the second-to-last, as a 1x1 convolution of a (batch, channels, length)
    tensor written as a product)."""
    a, b = inputs[0], inputs[1]
    if a in imp.consts:
        x = imp.tensor(b)
        w = _matrix(imp, imp.consts[a], "first operand")
        return _dense_on(imp, x, len(x.perm) - 2, w.T)
    x = imp.tensor(a)
    w = _matrix(imp, imp.need_const(b, "second operand"), "second operand")
    return _dense_on(imp, x, len(x.perm) - 1, w)


def _matrix(imp: _Importer, w: np.ndarray, what: str) -> np.ndarray:
    """A constant operand of a product as a 2-D matrix (leading size-1 axes,
    which only broadcast over the batch, dropped)."""
    while w.ndim > 2 and w.shape[0] == 1:
        w = w[0]
    if w.ndim != 2:
        raise imp.unsupported(
            f"a {what} of shape {w.shape}: only 2-D weights are supported"
        )
    return w


def _dense_on(imp: _Importer, x: _Value, axis: int, kernel: np.ndarray) -> _Value:
    """``x`` contracted on its ONNX per-sample ``axis`` with ``kernel`` of
    shape ``(n_in, units)``; the result has ``units`` in place of that axis."""
    shape = imp.onnx_shape(x)
    if axis < 0 or shape[axis] != kernel.shape[0]:
        raise ShapeError(
            f"{imp.where()} in '{imp.path}': a weight of shape {kernel.shape} does "
            f"not fit the tensor {(None,) + shape}"
        )
    if x.perm[axis] != imp.ir_rank(x) - 1:
        raise imp.layout_error(
            f"it multiplies along axis {axis + 1} of {(None,) + shape}, which is "
            "not the channel axis; only products over the channels are supported"
        )
    op = ops.Dense(units=int(kernel.shape[1]), use_bias=False)
    return imp.add(op, [x], x.perm, {"kernel": kernel})


@_handles("Einsum")
def _einsum(imp: _Importer, inputs, attrs):
    """An Einsum of a tensor with a constant matrix that contracts one axis
    with it (``"bcl,oc->bol"``, ``"bld,de->ble"``): a dense layer on the
    channels, with the output's axes in any order."""
    equation = str(attrs.get("equation", "")).replace(" ", "")
    terms, _, out = equation.partition("->")
    terms = terms.split(",")
    consts = [i for i in inputs if i in imp.consts]
    refusal = imp.unsupported(
        f"Einsum '{equation}' is supported only as a tensor times a constant "
        "matrix contracted over the channels"
    )
    if len(terms) != 2 or len(consts) != 1 or not out or "." in equation:
        raise refusal
    k = 0 if inputs[0] in imp.consts else 1
    w_term, x_term = terms[k], terms[1 - k]
    w = imp.consts[inputs[k]]
    x = imp.tensor(inputs[1 - k])
    shared = [c for c in w_term if c in x_term]
    if (
        w.ndim != 2
        or len(w_term) != 2
        or len(shared) != 1
        or shared[0] in out
        or len(set(x_term)) != len(x_term)
        or len(x_term) != len(x.perm) + 1
    ):
        raise refusal
    c = shared[0]
    o = w_term.replace(c, "")
    if sorted(out) != sorted(x_term.replace(c, o)) or out[0] != x_term[0]:
        raise refusal
    kernel = w if w_term == c + o else w.T
    y = _dense_on(imp, x, x_term.index(c) - 1, kernel)
    # The result in the order of x_term (c replaced by o), then as `out` says.
    y_term = x_term.replace(c, o)
    return _Value(y.node, tuple(y.perm[y_term.index(ch) - 1] for ch in out[1:]))


@_handles("ReduceMean", "ReduceSum", "ReduceMax", "ReduceLogSumExp")
def _reduce(imp: _Importer, inputs, attrs):
    stack = imp.values.get(inputs[0])
    if isinstance(stack, _Stack):
        return _reduce_stack(imp, stack, inputs, attrs)
    x = imp.tensor(inputs[0])
    rank = len(x.perm)
    axes = _axes(imp, inputs, attrs)
    if axes is None:
        if attrs.get("noop_with_empty_axes", 0):
            return x
        raise imp.unsupported("reducing over all axes (the batch too) is not supported")
    per = sorted({imp.sample_axis(a, rank) for a in axes})
    keep = bool(attrs.get("keepdims", 1))
    mode = {
        "ReduceMean": "average",
        "ReduceSum": "sum",
        "ReduceMax": "max",
        "ReduceLogSumExp": "logsumexp",
    }[imp.node.op_type]
    return _reduce_axes(imp, x, per, keep, mode)


def _reduce_axes(imp: _Importer, x: _Value, per: list[int], keep: bool, mode: str):
    """``x`` reduced over its ONNX per-sample axes ``per``."""
    rank = len(x.perm)
    axes = [a + 1 for a in per]
    shape = imp.onnx_shape(x)
    # Reducing an axis of size 1 changes no value.
    real = [i for i in per if shape[i] != 1]
    if len(x.real) == 1 and real and x.perm[real[0]] is not None:
        # Over the features of a vector, (batch, features) with any size-1
        # axes (a LayerNorm of gReLU's MLP head written out): as the length of
        # a one-channel sequence.
        n = shape[real[0]]
        column = imp.add(ops.Reshape((n, 1)), [x], (), suffix="/column")
        op = ops.GlobalPool1D(mode, axis=0, keepdims=False)
        perm = tuple(0 if i == real[0] else None for i in range(rank))
        out = imp.add(op, [column], perm)
        if keep:
            return out
        target = tuple(d for i, d in enumerate(imp.onnx_shape(out)) if i not in per)
        return _reshape_to(imp, out, target) if target else _Value(out.node, ())
    out = x
    if len(real) == 2 and len(x.real) == 2 and not keep and mode != "max":
        # Over a whole sample: over length, then a dense sum over channels.
        pooled = imp.add(ops.GlobalPool1D(mode, axis=0), [x], (0,), suffix="/length")
        n = imp.graph.nodes[pooled.node].shape[0]
        w = np.full((n, 1), 1.0 / n if mode == "average" else 1.0)
        return imp.add(ops.Dense(1, use_bias=False), [pooled], (), {"kernel": w})
    if len(real) > 1 or (real and len(x.real) != 2):
        raise imp.unsupported(
            f"reducing axes {axes} of {(None,) + shape}: only one axis of a "
            "(batch, channels, length) tensor is supported"
        )
    if real:
        ir_axis = x.perm[real[0]]
        op = ops.GlobalPool1D(mode, axis=ir_axis, keepdims=keep)
        if keep:
            return imp.add(op, [x], x.perm)
        perm = tuple(
            None if j is None else j - (j > ir_axis)
            for i, j in enumerate(x.perm)
            if i not in per
        )
        return imp.add(op, [x], perm)
    if keep:
        return out
    target = tuple(d for i, d in enumerate(imp.onnx_shape(out)) if i not in per)
    return _reshape_to(imp, out, target)


def _reduce_stack(imp: _Importer, stack: _Stack, inputs, attrs):
    axes = _axes(imp, inputs, attrs)
    if axes != [0] or attrs.get("keepdims", 1):
        raise imp.unsupported(
            "a stack of tensors (torch.stack) is supported only when reduced over "
            "its new axis 0 without keepdims"
        )
    xs = list(stack.values)
    perm = xs[0].perm
    if len(xs) == 1:
        return xs[0]
    kind = imp.node.op_type
    if kind in ("ReduceSum", "ReduceMean", "ReduceMax"):
        mode = {"ReduceSum": "add", "ReduceMean": "average", "ReduceMax": "maximum"}[
            kind
        ]
        return imp.add(ops.Merge(mode), xs, perm)
    # log-sum-exp as torch computes it: max + log(sum(exp(x - max)))
    top = imp.add(ops.Merge("maximum"), xs, perm, suffix="/max")
    terms = []
    for i, x in enumerate(xs):
        d = imp.add(ops.Merge("subtract"), [x, top], perm, suffix=f"/shift{i}")
        terms.append(
            imp.add(ops.Activation("exponential"), [d], perm, suffix=f"/exp{i}")
        )
    total = imp.add(ops.Merge("add"), terms, perm, suffix="/sum")
    log = imp.add(ops.Activation("log"), [total], perm, suffix="/log")
    return imp.add(ops.Merge("add"), [log, top], perm)


@_handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(imp: _Importer, inputs, attrs):
    """A reduction over every axis after the second, kept: over the length of
    a (batch, channels, length) tensor, and over the channels of a
    (batch, length, channels) one (tf2onnx writes a LayerNorm's means so)."""
    x = imp.tensor(inputs[0])
    mode = "max" if imp.node.op_type == "GlobalMaxPool" else "average"
    return _reduce_axes(imp, x, list(range(1, len(x.perm))), True, mode)


@_handles("LayerNormalization")
def _layer_norm(imp: _Importer, inputs, attrs):
    x = imp.tensor(inputs[0])
    rank = len(x.perm)
    axis = imp.sample_axis(int(attrs.get("axis", -1)), rank)
    if axis != rank - 1 or x.perm[-1] != imp.ir_rank(x) - 1:
        raise imp.unsupported(
            "only normalisation over the channel axis (the last one, after a "
            "transpose to (batch, length, channels)) is supported"
        )
    n = imp.onnx_shape(x)[-1]
    weights = {"gamma": np.broadcast_to(imp.need_const(inputs[1], "scale"), (n,))}
    if len(inputs) > 2 and inputs[2]:
        weights["beta"] = np.broadcast_to(imp.need_const(inputs[2], "bias"), (n,))
    op = ops.LayerNorm(
        epsilon=float(attrs.get("epsilon", 1e-5)), center="beta" in weights, scale=True
    )
    return imp.add(op, [x], x.perm, weights)


@_handles("Resize", "Upsample")
def _resize(imp: _Importer, inputs, attrs):
    x = imp.tensor(inputs[0])
    mode = attrs.get("mode", "nearest")
    coords = attrs.get("coordinate_transformation_mode", "half_pixel")
    if mode != "nearest" or coords not in (
        "asymmetric",
        "half_pixel",
        "pytorch_half_pixel",
    ):
        raise imp.unsupported(
            f"Resize mode '{mode}' with coordinate_transformation_mode '{coords}': "
            "only nearest-neighbour upsampling by an integer factor is supported"
        )
    shape = (None,) + imp.onnx_shape(x)
    if imp.node.op_type == "Upsample":
        scales = imp.need_const(inputs[1], "scales").tolist()
    elif (
        len(inputs) > 2
        and inputs[2]
        and imp.const(inputs[2]) is not None
        and imp.const(inputs[2]).size
    ):
        scales = imp.need_const(inputs[2], "scales").tolist()
    elif len(inputs) > 3 and inputs[3]:
        sizes = imp.need_const(inputs[3], "sizes").tolist()
        if None in shape[1:]:
            raise imp.needs_length("Resize to fixed sizes needs a fixed input length")
        scales = [1.0] + [o / i for o, i in zip(sizes[1:], shape[1:])]
    else:
        raise ModelFileError(f"{imp.where()} in '{imp.path}' has no scales or sizes")
    factor = 1
    for i, sc in enumerate(scales[1:]):
        if sc == 1:
            continue
        if x.perm[i] != 0 or len(x.real) != 2 or sc != int(sc) or sc < 1:
            raise imp.unsupported(
                f"scales {scales}: only an integer upsampling of the length axis "
                "is supported"
            )
        factor = int(sc)
    if factor == 1:
        return x
    # With an integer factor, every supported coordinate mode picks row i // factor.
    return imp.add(ops.UpSample1D(factor), [x], x.perm)


@_handles("Identity", "Dropout")
def _identity(imp: _Importer, inputs, attrs):
    return imp.tensor(inputs[0])


@_handles("Cast")
def _cast(imp: _Importer, inputs, attrs):
    if attrs.get("to") not in _FLOAT_TYPES:
        raise imp.unsupported(
            f"casting a tensor to ONNX type {attrs.get('to')} is not supported"
        )
    return imp.tensor(inputs[0])


@_handles("Constant")
def _constant(imp: _Importer, inputs, attrs):
    if "value" in attrs:
        return imp._array(attrs["value"])
    for key, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise imp.unsupported(
        f"a Constant with attributes {sorted(attrs)} is not supported"
    )


@_handles("Shape")
def _shape(imp: _Importer, inputs, attrs):
    repeated = imp.values.get(inputs[0])
    if isinstance(repeated, _Repeated):
        shape = repeated.shape(imp)
    else:
        shape = imp.onnx_shape(imp.tensor(inputs[0]))
    if None in shape:
        raise imp.needs_length(
            f"the shape of {(None,) + shape} needs a fixed input length"
        )
    full = np.array((1,) + shape, dtype=np.int64)  # the batch size does not matter here
    return full[attrs.get("start", 0) : attrs.get("end", None)]


# Nodes whose inputs are all constants are evaluated here, at import.


@_folds("Identity", "Dropout")
def _fold_identity(imp, xs, attrs):
    return xs[0]


@_folds("Cast")
def _fold_cast(imp, xs, attrs):
    from onnx import helper

    return xs[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))


@_folds("Add", "Sub", "Mul", "Div")
def _fold_binary(imp, xs, attrs):
    a, b = xs[0], xs[1]
    kind = imp.node.op_type
    if kind == "Div" and np.issubdtype(a.dtype, np.integer):
        return np.trunc(a / b).astype(a.dtype)
    return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[
        kind
    ](a, b)


# Shape arithmetic the TorchScript exporter writes around sizes it reads
# with Shape (centre crops, positional features), evaluated as ONNX defines it.
_ELEMENTWISE_FOLDS = {
    "Neg": np.negative,
    "Sqrt": np.sqrt,
    "Abs": np.abs,
    "Sign": np.sign,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Exp": np.exp,
    "Log": np.log,
    "Not": np.logical_not,
    "Equal": np.equal,
    "Less": np.less,
    "Greater": np.greater,
    "Max": np.maximum,
    "Min": np.minimum,
    "Where": np.where,
}


@_folds(*_ELEMENTWISE_FOLDS)
def _fold_elementwise(imp, xs, attrs):
    fn = _ELEMENTWISE_FOLDS[imp.node.op_type]
    if imp.node.op_type in ("Max", "Min"):
        return functools.reduce(fn, xs)
    return fn(*xs)


@_folds("ReduceProd", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin")
def _fold_reduce(imp, xs, attrs):
    fn = {
        "ReduceProd": np.prod,
        "ReduceSum": np.sum,
        "ReduceMean": np.mean,
        "ReduceMax": np.max,
        "ReduceMin": np.min,
    }[imp.node.op_type]
    axes = attrs.get("axes")
    if axes is None and len(xs) > 1 and xs[1] is not None and xs[1].size:
        axes = xs[1].reshape(-1).tolist()
    if axes is None and attrs.get("noop_with_empty_axes", 0):
        return xs[0]
    axis = None if axes is None else tuple(int(a) for a in axes)
    return fn(xs[0], axis=axis, keepdims=bool(attrs.get("keepdims", 1)))


@_folds("Mod")
def _fold_mod(imp, xs, attrs):
    if attrs.get("fmod", 0):
        return np.fmod(xs[0], xs[1])
    return np.mod(xs[0], xs[1])


@_folds("Range")
def _fold_range(imp, xs, attrs):
    start, limit, delta = (x.reshape(()) for x in xs)
    return np.arange(start, limit, delta, dtype=np.result_type(start, limit, delta))


@_folds("Expand")
def _fold_expand(imp, xs, attrs):
    shape = np.broadcast_shapes(xs[0].shape, tuple(int(d) for d in xs[1]))
    return np.broadcast_to(xs[0], shape).copy()


@_folds("Tile")
def _fold_tile(imp, xs, attrs):
    return np.tile(xs[0], [int(r) for r in xs[1]])


@_folds("MatMul")
def _fold_matmul(imp, xs, attrs):
    return np.matmul(xs[0], xs[1])


@_folds("Einsum")
def _fold_einsum(imp, xs, attrs):
    return np.einsum(str(attrs["equation"]), *xs)


@_folds("Pow")
def _fold_pow(imp, xs, attrs):
    return np.power(xs[0], xs[1])


@_folds("Concat")
def _fold_concat(imp, xs, attrs):
    return np.concatenate(xs, axis=int(attrs["axis"]))


@_folds("Gather")
def _fold_gather(imp, xs, attrs):
    return np.take(xs[0], xs[1], axis=int(attrs.get("axis", 0)))


@_folds("Unsqueeze")
def _fold_unsqueeze(imp, xs, attrs):
    axes = attrs.get(
        "axes", xs[1].tolist() if len(xs) > 1 and xs[1] is not None else []
    )
    out = xs[0]
    rank = out.ndim + len(axes)
    for a in sorted(a + rank if a < 0 else a for a in axes):
        out = np.expand_dims(out, a)
    return out


@_folds("Squeeze")
def _fold_squeeze(imp, xs, attrs):
    axes = attrs.get(
        "axes", xs[1].tolist() if len(xs) > 1 and xs[1] is not None else None
    )
    return np.squeeze(xs[0], axis=None if axes is None else tuple(axes))


@_folds("Reshape")
def _fold_reshape(imp, xs, attrs):
    shape = [int(s) for s in xs[1]]
    shape = [
        xs[0].shape[i] if s == 0 and not attrs.get("allowzero") else s
        for i, s in enumerate(shape)
    ]
    return xs[0].reshape(shape)


@_folds("Transpose")
def _fold_transpose(imp, xs, attrs):
    return np.transpose(xs[0], attrs.get("perm"))


@_folds("Slice")
def _fold_slice(imp, xs, attrs):
    index = [slice(None)] * xs[0].ndim
    for axis, start, end, step in _slice_params(imp, list(imp.node.input), attrs):
        index[axis] = slice(start, end, step)
    return xs[0][tuple(index)]


@_folds("Split")
def _fold_split(imp, xs, attrs):
    """Several outputs (tf2onnx splits the pads it computes for a transposed
    convolution's output shape)."""
    axis = int(attrs.get("axis", 0))
    n = xs[0].shape[axis]
    if len(xs) > 1 and xs[1] is not None:
        sizes = [int(s) for s in xs[1].reshape(-1)]
    elif "split" in attrs:
        sizes = [int(s) for s in attrs["split"]]
    else:
        parts = int(attrs.get("num_outputs", len(imp.node.output)))
        size = -(-n // parts)
        sizes = [min(size, n - i * size) for i in range(parts)]
    return np.split(xs[0], np.cumsum(sizes)[:-1], axis=axis)


@_folds("ConstantOfShape")
def _fold_constant_of_shape(imp, xs, attrs):
    value = attrs.get("value")
    fill = (
        imp._array(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
    )
    return np.full([int(s) for s in xs[0]], fill[0], dtype=fill.dtype)


#: The ONNX operator types the importer maps (some only on constants).
SUPPORTED_OPS = tuple(sorted(set(_HANDLERS) | set(_FOLD)))


def declared_specs(path: str) -> tuple[list, list]:
    """``(name, per-sample dims)`` of the graph inputs and outputs as the
    file declares them (``None`` for a free dimension)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    ins = [
        (i.name, tuple(_dims(i)[1:])) for i in model.graph.input if i.name not in init
    ]
    outs = [(o.name, tuple(_dims(o)[1:])) for o in model.graph.output]
    return ins, outs


def _dims(inp) -> list[int | None]:
    return [
        d.dim_value if d.HasField("dim_value") else None
        for d in inp.type.tensor_type.shape.dim
    ]


def _candidate_perms(model, path: str) -> list[dict[str, tuple[int, ...]]]:
    """Layouts to try for the model inputs, most likely first."""
    init = {i.name for i in model.graph.initializer}
    options = []
    names = []
    for inp in model.graph.input:
        if inp.name in init:
            continue
        dims = _dims(inp)
        if len(dims) == 3:
            a, b = dims[1:]
            first = [_CF, (0, 1)]
            if b == 4 and a != 4:
                first.reverse()
        elif len(dims) == 4 and dims[2] == 1:
            first = [(1, None, 0)]
        elif len(dims) == 4 and dims[3] == 1:
            first = [(1, 0, None)]
        else:
            continue
        names.append(inp.name)
        options.append(first)
    return [dict(zip(names, combo)) for combo in itertools.product(*options)] or [{}]


def read_onnx(path: str, length: int | None = None):
    """Read an ONNX model file into an IR graph; ``length`` fixes a sequence
    length the file leaves free.

    Raises :class:`NeedsLength` when the graph computes with a free length
    and ``length`` is not given.

    Returns
    -------
    graph : Graph
    info : dict
        ``format`` (``"onnx"``), ``producer``, ``input_perms`` and
        ``output_perms`` (per input and output, how the model's own layout maps
        to the IR's: model axis ``i`` is IR axis ``perm[i]``).
    """
    try:
        import onnx
    except ImportError:
        from ismkernel.errors import BackendUnavailableError

        raise BackendUnavailableError(
            f"'{path}' is an ONNX file; reading it needs the onnx package: "
            "pip install 'ismkernel[onnx]'"
        ) from None
    try:
        model = onnx.load(path)
    except Exception as err:  # protobuf's DecodeError and friends
        raise ModelFileError(f"'{path}' is not a readable ONNX file: {err}") from None
    if not model.graph.node and not model.graph.input:
        raise ModelFileError(f"'{path}' holds no ONNX graph")
    first_error = None
    for perms in _candidate_perms(model, path):
        importer = _Importer(model, path, perms, length)
        importer.output_perms = []
        try:
            graph = importer.run()
        except _LayoutMismatch as err:
            first_error = first_error or err
            continue
        producer = " ".join(
            p for p in (model.producer_name, model.producer_version) if p
        )
        info = {
            "format": "onnx",
            "producer": f"{producer or 'unknown producer'}, opset {importer.opset}",
            "input_perms": [importer.values[n].perm for n in graph.inputs],
            "output_perms": list(importer.output_perms),
        }
        return graph, info
    raise first_error
