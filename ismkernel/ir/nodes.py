"""The ops of the layer-spec IR: one frozen dataclass per op, with its rules.

Shapes in the IR are per sample, without the batch axis: a sequence tensor has
shape ``(seq_len, n_channels)``. An op holds only attributes; its weights live on
the :class:`Node` that applies it, as float32 arrays.

Everything the planner needs to know about an op lives on its class, so a new
op is written in one place (plus its reference function in
:mod:`ismkernel.backends.reference` and its importer handlers):

``shape(node, in_shapes)``
    The per-sample output shape; a :class:`~ismkernel.errors.ShapeError`
    naming the layer when the inputs do not fit.
``rule(node, in_shapes, out_shape)``
    ``(strategy, "")``: the device-neutral way a change confined to a window
    of rows crosses the op on ``(length, channels)`` tensors (``conv``,
    ``pool``, ``pointwise``, ``shift``, ``upsample``, ``merge``, ``concat``),
    or ``("", reason)``: no such rule, and the plan computes every value of
    every mutant from this node on.
``forward(intervals, in_lens, out_len)`` / ``backward(need, in_len, index)``
    The rows of the output a change of input rows can reach (vectorised over
    mutated positions), and the rows of an input read to produce given output
    rows (see :mod:`ismkernel.ir.geometry`).
``flops(node, in_shapes, shape)``
    Floating-point operations of a forward pass of one sample.
``can_vanish``
    Whether a change can vanish exactly across the op (a clamp, a maximum),
    so that a mutant may stop early after it.
``affine``
    Whether the op is affine in its inputs, so that two changes cross it
    independently (``f(x + a + b) = f(x + a) + f(x + b) - f(x)``).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import ClassVar

import numpy as np

from ismkernel.errors import ShapeError
from ismkernel.ir.geometry import (
    EMPTY,
    clip_interval,
    conv_padding,
    interval_hull,
    pool_padding,
    window_backward,
    window_forward,
)

__all__ = [
    "Op",
    "Input",
    "Conv1D",
    "Pool1D",
    "Crop1D",
    "ZeroPad1D",
    "UpSample1D",
    "ZeroInsert1D",
    "Activation",
    "PReLU",
    "ChannelAffine",
    "LayerNorm",
    "Merge",
    "Concatenate",
    "Flatten",
    "Reshape",
    "Dense",
    "ChannelSlice",
    "GlobalPool1D",
    "Node",
    "ACTIVATIONS",
    "MERGE_MODES",
    "CONV_PADDINGS",
    "POOL_PADDINGS",
]

Shape = tuple[int | None, ...]
Interval = tuple[np.ndarray, np.ndarray]

#: Names of the pointwise activation functions the IR knows.
ACTIVATIONS = (
    "linear",
    "relu",
    "elu",
    "selu",
    "gelu",
    "sigmoid",
    "hard_sigmoid",
    "hard_silu",
    "tanh",
    "softplus",
    "softsign",
    "exponential",
    "silu",
    "mish",
    "softmax",
    "log_softmax",
    "celu",
    "hard_tanh",
    "log_sigmoid",
    "tanh_shrink",
    "hard_shrink",
    "soft_shrink",
    "sparse_plus",
    "sparse_sigmoid",
    "squareplus",
    "erf",
    "log",
    "abs",
    "reciprocal",
    "sqrt",
    "clip",
)

MERGE_MODES = (
    "add",
    "subtract",
    "multiply",
    "divide",
    "average",
    "maximum",
    "minimum",
)
CONV_PADDINGS = ("valid", "same", "causal")
POOL_PADDINGS = ("valid", "same")


def _length(dim: int | None, fn) -> int | None:
    return None if dim is None else fn(dim)


def _need_rank(node: Node, shape: Shape, rank: int, what: str) -> None:
    if len(shape) != rank:
        raise ShapeError(
            f"{node.where()} expects a {what} input of rank {rank} per sample, "
            f"got shape {shape}"
        )


def _same(a: int | None, b: int | None) -> bool:
    return a is None or b is None or a == b


def _broadcast(a: Shape, b: Shape) -> Shape:
    """NumPy broadcasting of per-sample shapes; ``None`` matches anything."""
    if len(a) != len(b):
        raise ShapeError(f"ranks differ: {a} and {b}")
    out = []
    for i, j in zip(a, b):
        if i == j or j == 1:
            out.append(i)
        elif i == 1:
            out.append(j)
        elif i is None or j is None:
            out.append(i if j is None else j)
        else:
            raise ShapeError(f"shapes {a} and {b} do not broadcast")
    return tuple(out)


def _size(shape: Shape) -> int:
    return math.prod(shape) if shape else 1


@dataclass(frozen=True)
class Op:
    """Base class of all ops. ``weight_names`` lists the arrays a node carries.

    The defaults describe an op with no incremental rule whose output keeps
    the rows of its input (see the module docs for each rule).
    """

    weight_names: ClassVar[tuple[str, ...]] = ()
    can_vanish: ClassVar[bool] = False

    @property
    def affine(self) -> bool:
        return False

    @property
    def kind(self) -> str:
        return type(self).__name__

    def describe(self) -> str:
        """The op with its non-default attributes: ``Conv1D(n_filters=8, ...)``."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.default is MISSING or value != f.default:
                parts.append(f"{f.name}={value!r}")
        return f"{self.kind}({', '.join(parts)})"

    def shape(self, node: Node, in_shapes: list[Shape]) -> Shape:
        raise ShapeError(f"{node.where()}: no shape rule for op {self.kind}")

    def rule(
        self, node: Node, in_shapes: list[Shape], out_shape: Shape
    ) -> tuple[str, str]:
        return "", f"{self.kind} has no incremental rule"

    def forward(
        self, intervals: list[Interval], in_lens: list[int], out_len: int
    ) -> Interval:
        if len(intervals) > 1:
            return interval_hull(intervals)
        return clip_interval(*intervals[0], out_len)

    def backward(
        self, need: tuple[int, int], in_len: int, in_index: int
    ) -> tuple[int, int]:
        return _clip_need(need[0], need[1], in_len)

    def flops(self, node: Node, in_shapes: list[Shape], shape: Shape) -> float:
        return 0.0


def _clip_need(lo: int, hi: int, in_len: int) -> tuple[int, int]:
    lo, hi = max(lo, 0), min(hi, in_len)
    return (lo, hi) if lo < hi else EMPTY


class _Pointwise:
    """Mixin: each output row depends on the same input row only."""

    def rule(self, node, in_shapes, out_shape) -> tuple[str, str]:
        return "pointwise", ""


class _Window:
    """Mixin of sliding-window ops: ``_window(in_len)`` gives their geometry."""

    def _window(self, in_len: int) -> dict:
        raise NotImplementedError

    def forward(self, intervals, in_lens, out_len) -> Interval:
        lo, hi = intervals[0]
        return window_forward(lo, hi, **self._window(in_lens[0]))

    def backward(self, need, in_len, in_index) -> tuple[int, int]:
        if need[0] >= need[1]:
            return EMPTY
        p = self._window(in_len)
        p.pop("out_len")
        return window_backward(need, in_len=in_len, **p)


@dataclass(frozen=True)
class Input(Op):
    """A model input. ``shape`` may hold ``None`` for a free length."""

    @property
    def affine(self) -> bool:
        return True

    # (the field shadows the shape rule: an input's shape is this attribute)
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class Conv1D(_Window, Op):
    """1-D convolution (cross-correlation, as Keras) on ``(seq_len, n_channels)``.

    ``padding`` is ``"valid"``, ``"same"``, ``"causal"`` or explicit zero rows
    ``(left, right)``.

    Weights: ``kernel`` of shape ``(kernel_size, n_channels // groups, n_filters)``
    and, with ``use_bias``, ``bias`` of shape ``(n_filters,)``.
    """

    @property
    def affine(self) -> bool:
        return True

    n_filters: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    padding: str | tuple[int, int] = "valid"
    groups: int = 1
    use_bias: bool = True

    @property
    def weight_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("kernel", "bias") if self.use_bias else ("kernel",)

    def _window(self, in_len: int) -> dict:
        left, _, out_len = conv_padding(
            in_len, self.kernel_size, self.stride, self.dilation, self.padding
        )
        return dict(
            kernel_size=self.kernel_size,
            stride=self.stride,
            dilation=self.dilation,
            left=left,
            out_len=out_len,
        )

    def shape(self, node, in_shapes) -> Shape:
        x = in_shapes[0]
        where = node.where()
        _need_rank(node, x, 2, "(seq_len, n_channels)")
        n_channels = x[1]
        kernel = node.weights["kernel"]
        expected = (self.kernel_size, n_channels // self.groups, self.n_filters)
        if n_channels % self.groups:
            raise ShapeError(
                f"{where}: {n_channels} input channels do not split into "
                f"{self.groups} groups"
            )
        if kernel.shape != expected:
            raise ShapeError(
                f"{where}: kernel has shape {kernel.shape} but an input of "
                f"{n_channels} channels needs {expected}"
            )
        length = _length(
            x[0],
            lambda n: conv_padding(
                n, self.kernel_size, self.stride, self.dilation, self.padding
            )[2],
        )
        if length == 0:
            raise ShapeError(
                f"{where}: input length {x[0]} is shorter than the kernel span "
                f"{(self.kernel_size - 1) * self.dilation + 1}"
            )
        return (length, self.n_filters)

    def rule(self, node, in_shapes, out_shape) -> tuple[str, str]:
        return "conv", ""

    def flops(self, node, in_shapes, shape) -> float:
        return (
            2.0
            * shape[0]
            * self.kernel_size
            * (in_shapes[0][1] // self.groups)
            * self.n_filters
        )


@dataclass(frozen=True)
class Pool1D(_Window, Op):
    """Max or average pooling along the length axis.

    ``same`` padding follows TensorFlow: padded cells never win a maximum and are
    not counted in an average. Explicit padding ``(left, right)`` adds that many
    such cells at each end.
    """

    @property
    def affine(self) -> bool:
        return self.mode == "average"

    mode: str  # "max" or "average"
    pool_size: int
    stride: int
    padding: str | tuple[int, int] = "valid"
    can_vanish: ClassVar[bool] = True

    def _window(self, in_len: int) -> dict:
        left, _, out_len = pool_padding(
            in_len, self.pool_size, self.stride, self.padding
        )
        return dict(
            kernel_size=self.pool_size,
            stride=self.stride,
            dilation=1,
            left=left,
            out_len=out_len,
        )

    def shape(self, node, in_shapes) -> Shape:
        x = in_shapes[0]
        _need_rank(node, x, 2, "(seq_len, n_channels)")
        if isinstance(self.padding, tuple):
            self._check_pads(node, x[0])
        length = _length(
            x[0],
            lambda n: pool_padding(n, self.pool_size, self.stride, self.padding)[2],
        )
        if length == 0:
            raise ShapeError(
                f"{node.where()}: input length {x[0]} is shorter than pool size "
                f"{self.pool_size}"
            )
        return (length, x[1])

    def _check_pads(self, node: Node, length: int | None) -> None:
        """Explicit pooling pads must leave an input row in every window (as
        PyTorch's do): a window of padding alone has no maximum or mean."""
        left, right = self.padding
        bad = left >= self.pool_size or right >= self.pool_size
        if not bad and length is not None:
            out_len = pool_padding(length, self.pool_size, self.stride, self.padding)[2]
            bad = out_len > 0 and (out_len - 1) * self.stride >= left + length
        if bad:
            raise ShapeError(
                f"{node.where()}: padding {self.padding} leaves a pooling window of "
                f"size {self.pool_size} (stride {self.stride}) with no input row"
            )

    def rule(self, node, in_shapes, out_shape) -> tuple[str, str]:
        return "pool", ""

    def flops(self, node, in_shapes, shape) -> float:
        return float(_size(shape) * self.pool_size)


@dataclass(frozen=True)
class Crop1D(Op):
    """Drop ``start`` rows at the beginning and ``end`` rows at the end."""

    @property
    def affine(self) -> bool:
        return True

    start: int
    end: int

    @property
    def row_offset(self) -> int:
        """Output row ``o`` is input row ``o + row_offset``."""
        return self.start

    def shape(self, node, in_shapes) -> Shape:
        x = in_shapes[0]
        _need_rank(node, x, 2, "(seq_len, n_channels)")
        length = _length(x[0], lambda n: n - self.start - self.end)
        if length is not None and length <= 0:
            raise ShapeError(
                f"{node.where()}: cropping ({self.start}, {self.end}) leaves nothing "
                f"of length {x[0]}"
            )
        return (length, x[1])

    def rule(self, node, in_shapes, out_shape) -> tuple[str, str]:
        return "shift", ""

    def forward(self, intervals, in_lens, out_len) -> Interval:
        lo, hi = intervals[0]
        return clip_interval(lo - self.start, hi - self.start, out_len)

    def backward(self, need, in_len, in_index) -> tuple[int, int]:
        if need[0] >= need[1]:
            return EMPTY
        return _clip_need(need[0] + self.start, need[1] + self.start, in_len)


@dataclass(frozen=True)
class ZeroPad1D(Op):
    """Add ``left`` and ``right`` rows of zeros along the length axis."""

    @property
    def affine(self) -> bool:
        return True

    left: int
    right: int

    @property
    def row_offset(self) -> int:
        """Output row ``o`` is input row ``o + row_offset`` (zero outside it)."""
        return -self.left

    def shape(self, node, in_shapes) -> Shape:
        x = in_shapes[0]
        _need_rank(node, x, 2, "(seq_len, n_channels)")
        return (_length(x[0], lambda n: n + self.left + self.right), x[1])

    def rule(self, node, in_shapes, out_shape) -> tuple[str, str]:
        return "shift", ""

    def forward(self, intervals, in_lens, out_len) -> Interval:
        lo, hi = intervals[0]
        return clip_interval(lo + self.left, hi + self.left, out_len)

    def backward(self, need, in_len, in_index) -> tuple[int, int]:
        if need[0] >= need[1]:
            return EMPTY
        return _clip_need(need[0] - self.left, need[1] - self.left, in_len)


@dataclass(frozen=True)
class ZeroInsert1D(Op):
    """``stride - 1`` rows of zeros between consecutive rows: output row
    ``i * stride`` is input row ``i``, the others are zero (length ``(L - 1)
    * stride + 1``). A transposed convolution of stride ``s`` is this op
    followed by a convolution with the kernel reversed."""

    stride: int

    @property
    def affine(self) -> bool:
        return True

    def shape(self, node, in_shapes) -> Shape:
        x = in_shapes[0]
        _need_rank(node, x, 2, "(seq_len, n_channels)")
        if x[0] is not None and x[0] < 1:
            raise ShapeError(f"{node.where()}: an input of length {x[0]} has no rows")
        return (_length(x[0], lambda n: (n - 1) * self.stride + 1), x[1])

    def rule(self, node, in_shapes, out_shape) -> tuple[str, str]:
        return "dilate", ""

    def forward(self, intervals, in_lens, out_len) -> Interval:
        lo, hi = intervals[0]
        return clip_interval(lo * self.stride, (hi - 1) * self.stride + 1, out_len)

    def backward(self, need, in_len, in_index) -> tuple[int, int]:
        if need[0] >= need[1]:
            return EMPTY
        lo = -(-need[0] // self.stride)
        hi = (need[1] - 1) // self.stride + 1
        return _clip_need(lo, hi, in_len)


@dataclass(frozen=True)
class UpSample1D(Op):
    """Repeat every row ``size`` times along the length axis."""

    @property
    def affine(self) -> bool:
        return True

    size: int

    def shape(self, node, in_shapes) -> Shape:
        x = in_shapes[0]
        _need_rank(node, x, 2, "(seq_len, n_channels)")
        return (_length(x[0], lambda n: n * self.size), x[1])

    def rule(self, node, in_shapes, out_shape) -> tuple[str, str]:
        return "upsample", ""

    def forward(self, intervals, in_lens, out_len) -> Interval:
        lo, hi = intervals[0]
        return clip_interval(lo * self.size, hi * self.size, out_len)

    def backward(self, need, in_len, in_index) -> tuple[int, int]:
        if need[0] >= need[1]:
            return EMPTY
        lo, hi = need[0] // self.size, (need[1] - 1) // self.size + 1
        return _clip_need(lo, hi, in_len)


@dataclass(frozen=True)
class Activation(Op):
    """A pointwise activation (``softmax`` and ``log_softmax``: over ``axis``).

    ``relu`` follows Keras: ``x`` where ``x > threshold`` (else 0), clipped to
    ``[0, max_value]`` when ``max_value`` is set, minus
    ``negative_slope * relu(threshold - x)``. ``alpha`` is the ELU and CELU
    scale, the slope of ``hard_sigmoid``/``hard_silu`` (Keras 2: 0.2, Keras 3:
    1/6) and ``b`` of ``squareplus``; ``threshold`` is also that of
    ``hard_shrink`` and ``soft_shrink``. ``clip`` keeps values in
    ``[threshold, max_value]``. ``approximate`` selects the tanh form of
    ``gelu``.
    """

    @property
    def affine(self) -> bool:
        return self.fn == "linear"

    fn: str
    negative_slope: float = 0.0
    max_value: float | None = None
    threshold: float = 0.0
    alpha: float = 1.0
    approximate: bool = False
    axis: int = -1
    can_vanish: ClassVar[bool] = True

    @property
    def is_plain_relu(self) -> bool:
        """``max(x, 0)``, with none of Keras's ReLU options."""
        return (
            self.fn == "relu"
            and self.negative_slope == 0
            and self.max_value is None
            and self.threshold == 0
        )

    def shape(self, node, in_shapes) -> Shape:
        x = in_shapes[0]
        if self.fn in ("softmax", "log_softmax") and not -len(x) <= self.axis < len(x):
            raise ShapeError(
                f"{node.where()}: axis {self.axis} out of range for shape {x}"
            )
        return tuple(x)

    def rule(self, node, in_shapes, out_shape) -> tuple[str, str]:
        if self.fn in ("softmax", "log_softmax") and self.axis % 2 == 0:
            return "", f"{self.fn} over the length axis"
        return "pointwise", ""

    def flops(self, node, in_shapes, shape) -> float:
        return float(_size(shape))


class _BroadcastWeights:
    """Mixin of ops whose weights broadcast against the input."""

    def shape(self, node, in_shapes) -> Shape:
        x = in_shapes[0]
        for name, w in node.weights.items():
            try:
                fits = _broadcast(w.shape, x) == tuple(x)
            except ShapeError:
                fits = False
            if not fits:
                raise ShapeError(
                    f"{node.where()}: weight '{name}' of shape {w.shape} does not "
                    f"fit an input of shape {x}"
                )
        return tuple(x)

    def rule(self, node, in_shapes, out_shape) -> tuple[str, str]:
        for w in node.weights.values():
            if w.ndim == 2 and w.shape[0] != 1:
                return "", "weights vary along the length axis"
        return "pointwise", ""

    def flops(self, node, in_shapes, shape) -> float:
        return float(_size(shape))


@dataclass(frozen=True)
class PReLU(_BroadcastWeights, Op):
    """Parametric ReLU: ``max(x, 0) + alpha * min(x, 0)``.

    Weight ``alpha`` has the per-sample shape of the input with the shared axes
    set to 1, so it broadcasts.
    """

    weight_names: ClassVar[tuple[str, ...]] = ("alpha",)
    can_vanish: ClassVar[bool] = True


@dataclass(frozen=True)
class ChannelAffine(_BroadcastWeights, Op):
    """``x * scale + shift`` along ``axis``; the inference form of BatchNorm.

    Weights ``scale`` and ``shift`` are shaped to broadcast against the input.
    """

    @property
    def affine(self) -> bool:
        return True

    axis: int = -1
    weight_names: ClassVar[tuple[str, ...]] = ("scale", "shift")


@dataclass(frozen=True)
class LayerNorm(_Pointwise, Op):
    """Layer normalisation over the last axis, with optional gamma and beta."""

    epsilon: float
    center: bool = True
    scale: bool = True

    @property
    def weight_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return (("gamma",) if self.scale else ()) + (("beta",) if self.center else ())

    def shape(self, node, in_shapes) -> Shape:
        x = in_shapes[0]
        for name, w in node.weights.items():
            if w.shape != (x[-1],):
                raise ShapeError(
                    f"{node.where()}: weight '{name}' has shape {w.shape} but an "
                    f"input of shape {x} needs {(x[-1],)}"
                )
        return tuple(x)

    def flops(self, node, in_shapes, shape) -> float:
        return 5.0 * _size(shape)


@dataclass(frozen=True)
class Merge(Op):
    """Element-wise merge of inputs of one shape, left to right."""

    @property
    def affine(self) -> bool:
        return self.mode in ("add", "subtract", "average")

    mode: str
    can_vanish: ClassVar[bool] = True

    def shape(self, node, in_shapes) -> Shape:
        where = node.where()
        binary = self.mode in ("subtract", "divide")
        if len(in_shapes) < 2 or (binary and len(in_shapes) != 2):
            n = "exactly 2" if binary else "at least 2"
            raise ShapeError(f"{where} needs {n} inputs, got {len(in_shapes)}")
        out = in_shapes[0]
        for s in in_shapes[1:]:
            try:
                out = _broadcast(out, s)
            except ShapeError:
                raise ShapeError(
                    f"{where}: inputs of shapes {in_shapes} cannot be merged"
                ) from None
        return out

    def rule(self, node, in_shapes, out_shape) -> tuple[str, str]:
        if any(tuple(s) != tuple(out_shape) for s in in_shapes):
            return "", "merge that broadcasts its inputs"
        return "merge", ""

    def forward(self, intervals, in_lens, out_len) -> Interval:
        return interval_hull(intervals)

    def flops(self, node, in_shapes, shape) -> float:
        return float(_size(shape) * max(1, len(in_shapes) - 1))


@dataclass(frozen=True)
class Concatenate(Op):
    """Concatenate along ``axis`` (per sample, non-negative)."""

    @property
    def affine(self) -> bool:
        return True

    axis: int

    def shape(self, node, in_shapes) -> Shape:
        where = node.where()
        rank = len(in_shapes[0])
        if any(len(s) != rank for s in in_shapes) or not 0 <= self.axis < rank:
            raise ShapeError(
                f"{where}: cannot concatenate shapes {in_shapes} on axis {self.axis}"
            )
        for s in in_shapes[1:]:
            for i in range(rank):
                if i != self.axis and not _same(s[i], in_shapes[0][i]):
                    raise ShapeError(
                        f"{where}: cannot concatenate shapes {in_shapes} on "
                        f"axis {self.axis}"
                    )
        dims = [s[self.axis] for s in in_shapes]
        total = None if None in dims else sum(dims)
        out = list(in_shapes[0])
        out[self.axis] = total
        return tuple(out)

    def rule(self, node, in_shapes, out_shape) -> tuple[str, str]:
        if self.axis == 1:
            return "concat", ""
        return "", "concatenation along the length axis"

    def forward(self, intervals, in_lens, out_len) -> Interval:
        return interval_hull(intervals)


@dataclass(frozen=True)
class Flatten(Op):
    """Row-major flatten. ``channels_first`` moves axis 0 last first (Keras)."""

    @property
    def affine(self) -> bool:
        return True

    channels_first: bool = False

    def shape(self, node, in_shapes) -> Shape:
        x = in_shapes[0]
        if None in x:
            raise ShapeError(
                f"{node.where()} needs a fixed input shape, got {x}; give the model "
                "input a fixed length"
            )
        return (math.prod(x),)


@dataclass(frozen=True)
class Reshape(Op):
    """Row-major reshape to ``target_shape`` (per sample, fully resolved)."""

    @property
    def affine(self) -> bool:
        return True

    target_shape: tuple[int, ...]

    def shape(self, node, in_shapes) -> Shape:
        x = in_shapes[0]
        if None in x:
            raise ShapeError(f"{node.where()} needs a fixed input shape, got {x}")
        if math.prod(x) != math.prod(self.target_shape):
            raise ShapeError(
                f"{node.where()}: cannot reshape {x} ({math.prod(x)} values) to "
                f"{self.target_shape}"
            )
        return tuple(self.target_shape)


@dataclass(frozen=True)
class Dense(_Pointwise, Op):
    """``x @ kernel + bias`` on the last axis, any rank.

    Weights: ``kernel`` of shape ``(n_in, units)``, ``bias`` of shape ``(units,)``.
    """

    @property
    def affine(self) -> bool:
        return True

    units: int
    use_bias: bool = True

    @property
    def weight_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("kernel", "bias") if self.use_bias else ("kernel",)

    def shape(self, node, in_shapes) -> Shape:
        x = in_shapes[0] if in_shapes else ()
        if not x:
            raise ShapeError(
                f"{node.where()} needs an input of rank >= 1, got a scalar"
            )
        kernel = node.weights["kernel"]
        if kernel.shape != (x[-1], self.units):
            raise ShapeError(
                f"{node.where()}: kernel has shape {kernel.shape} but an input with "
                f"last axis {x[-1]} needs {(x[-1], self.units)}"
            )
        return tuple(x[:-1]) + (self.units,)

    def flops(self, node, in_shapes, shape) -> float:
        return 2.0 * math.prod(in_shapes[0]) * self.units


@dataclass(frozen=True)
class ChannelSlice(_Pointwise, Op):
    """Channels ``[start, end)`` of the last axis (``torch.chunk``, GLU)."""

    @property
    def affine(self) -> bool:
        return True

    start: int
    end: int

    def shape(self, node, in_shapes) -> Shape:
        x = in_shapes[0] if in_shapes else ()
        if not x or x[-1] is None or not 0 <= self.start < self.end <= x[-1]:
            raise ShapeError(
                f"{node.where()}: channels [{self.start}, {self.end}) do not fit an "
                f"input of shape {x}"
            )
        return tuple(x[:-1]) + (self.end - self.start,)


@dataclass(frozen=True)
class GlobalPool1D(Op):
    """Mean, max, sum or log-sum-exp over the length ``axis`` (0 for
    channels-last inputs)."""

    @property
    def affine(self) -> bool:
        return self.mode in ("average", "sum")

    mode: str  # "max", "average", "sum" or "logsumexp"
    axis: int = 0
    keepdims: bool = False

    def shape(self, node, in_shapes) -> Shape:
        x = in_shapes[0]
        _need_rank(node, x, 2, "(seq_len, n_channels)")
        keep = 1 - self.axis
        if self.keepdims:
            out = [1, 1]
            out[keep] = x[keep]
            return tuple(out)
        return (x[keep],)

    def rule(self, node, in_shapes, out_shape) -> tuple[str, str]:
        if self.axis == 1 and self.keepdims:  # a reduction over channels, per row
            return "pointwise", ""
        return "", f"{self.kind} has no incremental rule"

    def flops(self, node, in_shapes, shape) -> float:
        return float(math.prod(in_shapes[0]))


@dataclass
class Node:
    """One application of an op in the graph.

    Parameters
    ----------
    name : str
        Unique id in the graph (the Keras layer name, with ``@k`` for the k-th
        further call of a shared layer and ``/`` for nested models).
    op : Op
        What the node computes.
    inputs : tuple of str
        Names of the nodes whose outputs feed this one, in order.
    weights : dict of str to ndarray of float32
        The op's arrays; nodes of a shared layer share the same arrays.
    layer : str
        The source layer this node came from, for messages.
    layer_class : str
        The source layer's class, for messages.
    shape : tuple
        Per-sample output shape; set by :meth:`Graph.infer_shapes`.
    """

    name: str
    op: Op
    inputs: tuple[str, ...] = ()
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    layer: str = ""
    layer_class: str = ""
    shape: tuple[int | None, ...] | None = None

    @property
    def n_params(self) -> int:
        return int(sum(w.size for w in self.weights.values()))

    def where(self) -> str:
        """The node as messages name it: ``layer 'conv1d_1' (Conv1D)``."""
        label = self.layer or self.name
        cls = self.layer_class or self.op.kind
        return f"layer '{label}' ({cls})"
