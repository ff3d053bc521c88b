"""The ops of the layer-spec IR: one frozen dataclass per op.

Shapes in the IR are per sample, without the batch axis: a sequence tensor has
shape ``(seq_len, n_channels)``. An op holds only attributes; its weights live on
the :class:`~ismkernel.ir.graph.Node` that applies it, as float32 arrays.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import ClassVar

import numpy as np

__all__ = [
    "Op",
    "Input",
    "Conv1D",
    "Pool1D",
    "Crop1D",
    "ZeroPad1D",
    "UpSample1D",
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


@dataclass(frozen=True)
class Op:
    """Base class of all ops. ``weight_names`` lists the arrays a node carries."""

    weight_names: ClassVar[tuple[str, ...]] = ()

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


@dataclass(frozen=True)
class Input(Op):
    """A model input. ``shape`` may hold ``None`` for a free length."""

    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class Conv1D(Op):
    """1-D convolution (cross-correlation, as Keras) on ``(seq_len, n_channels)``.

    ``padding`` is ``"valid"``, ``"same"``, ``"causal"`` or explicit zero rows
    ``(left, right)``.

    Weights: ``kernel`` of shape ``(kernel_size, n_channels // groups, n_filters)``
    and, with ``use_bias``, ``bias`` of shape ``(n_filters,)``.
    """

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


@dataclass(frozen=True)
class Pool1D(Op):
    """Max or average pooling along the length axis.

    ``same`` padding follows TensorFlow: padded cells never win a maximum and are
    not counted in an average. Explicit padding ``(left, right)`` adds that many
    such cells at each end.
    """

    mode: str  # "max" or "average"
    pool_size: int
    stride: int
    padding: str | tuple[int, int] = "valid"


@dataclass(frozen=True)
class Crop1D(Op):
    """Drop ``start`` rows at the beginning and ``end`` rows at the end."""

    start: int
    end: int


@dataclass(frozen=True)
class ZeroPad1D(Op):
    """Add ``left`` and ``right`` rows of zeros along the length axis."""

    left: int
    right: int


@dataclass(frozen=True)
class UpSample1D(Op):
    """Repeat every row ``size`` times along the length axis."""

    size: int


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

    fn: str
    negative_slope: float = 0.0
    max_value: float | None = None
    threshold: float = 0.0
    alpha: float = 1.0
    approximate: bool = False
    axis: int = -1


@dataclass(frozen=True)
class PReLU(Op):
    """Parametric ReLU: ``max(x, 0) + alpha * min(x, 0)``.

    Weight ``alpha`` has the per-sample shape of the input with the shared axes
    set to 1, so it broadcasts.
    """

    weight_names: ClassVar[tuple[str, ...]] = ("alpha",)


@dataclass(frozen=True)
class ChannelAffine(Op):
    """``x * scale + shift`` along ``axis``; the inference form of BatchNorm.

    Weights ``scale`` and ``shift`` are shaped to broadcast against the input.
    """

    axis: int = -1
    weight_names: ClassVar[tuple[str, ...]] = ("scale", "shift")


@dataclass(frozen=True)
class LayerNorm(Op):
    """Layer normalisation over the last axis, with optional gamma and beta."""

    epsilon: float
    center: bool = True
    scale: bool = True

    @property
    def weight_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return (("gamma",) if self.scale else ()) + (("beta",) if self.center else ())


@dataclass(frozen=True)
class Merge(Op):
    """Element-wise merge of inputs of one shape, left to right."""

    mode: str


@dataclass(frozen=True)
class Concatenate(Op):
    """Concatenate along ``axis`` (per sample, non-negative)."""

    axis: int


@dataclass(frozen=True)
class Flatten(Op):
    """Row-major flatten. ``channels_first`` moves axis 0 last first (Keras)."""

    channels_first: bool = False


@dataclass(frozen=True)
class Reshape(Op):
    """Row-major reshape to ``target_shape`` (per sample, fully resolved)."""

    target_shape: tuple[int, ...]


@dataclass(frozen=True)
class Dense(Op):
    """``x @ kernel + bias`` on the last axis, any rank.

    Weights: ``kernel`` of shape ``(n_in, units)``, ``bias`` of shape ``(units,)``.
    """

    units: int
    use_bias: bool = True

    @property
    def weight_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("kernel", "bias") if self.use_bias else ("kernel",)


@dataclass(frozen=True)
class ChannelSlice(Op):
    """Channels ``[start, end)`` of the last axis (``torch.chunk``, GLU)."""

    start: int
    end: int


@dataclass(frozen=True)
class GlobalPool1D(Op):
    """Mean, max, sum or log-sum-exp over the length ``axis`` (0 for
    channels-last inputs)."""

    mode: str  # "max", "average", "sum" or "logsumexp"
    axis: int = 0
    keepdims: bool = False


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
