"""One import handler per Keras layer class.

A handler reads a layer's config and weights and adds IR nodes to the graph
being built; it returns the names of the nodes holding the layer's outputs.
Nothing here executes anything from the model file: configs are plain JSON and
every field used is read and validated explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ismkernel.errors import ShapeError, UnsupportedLayerError
from ismkernel.io.transposed import transposed_geometry, transposed_ops
from ismkernel.ir import nodes as ops

if TYPE_CHECKING:
    from ismkernel.io.keras import LayerCall

__all__ = [
    "HANDLERS",
    "IDENTITY_LAYERS",
    "KERAS_LAYER_CLASSES",
    "supported_layers",
    "parse_activation",
]

Handler = Callable[["LayerCall", list[str]], list[str]]
HANDLERS: dict[str, Handler] = {}

#: Layers that are the identity at inference; they add no node.
IDENTITY_LAYERS = frozenset(
    {
        "Dropout",
        "SpatialDropout1D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
        "Identity",
    }
)


#: Layer classes Keras itself ships (Keras 2 and 3), supported or not: any
#: other class name in a config is a custom layer, defined by the model's own
#: Python code. Keras 2's HDF5 configs do not say which module a class comes
#: from, so the name is all there is to go by.
KERAS_LAYER_CLASSES = frozenset(
    """
    Activation ActivityRegularization Add AdditiveAttention AlphaDropout
    Attention Average AveragePooling1D AveragePooling2D AveragePooling3D
    AvgPool1D AvgPool2D AvgPool3D BatchNormalization Bidirectional
    CategoryEncoding CenterCrop Concatenate Conv1D Conv1DTranspose Conv2D
    Conv2DTranspose Conv3D Conv3DTranspose ConvLSTM1D ConvLSTM2D ConvLSTM3D
    Convolution1D Convolution2D Convolution3D Cropping1D Cropping2D Cropping3D
    CuDNNGRU CuDNNLSTM Dense DenseFeatures DepthwiseConv1D DepthwiseConv2D
    Discretization Dot Dropout EinsumDense ELU Embedding Flatten GaussianDropout
    GaussianNoise GlobalAveragePooling1D GlobalAveragePooling2D
    GlobalAveragePooling3D GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D
    GlobalMaxPool1D GlobalMaxPool2D GlobalMaxPool3D GlobalMaxPooling1D
    GlobalMaxPooling2D GlobalMaxPooling3D GroupNormalization
    GroupQueryAttention GRU GRUCell Hashing Identity InputLayer
    IntegerLookup Lambda LayerNormalization LeakyReLU LocallyConnected1D
    LocallyConnected2D LSTM LSTMCell Masking Maximum MaxPool1D MaxPool2D
    MaxPool3D MaxPooling1D MaxPooling2D MaxPooling3D Minimum MultiHeadAttention
    Multiply Normalization Permute PReLU RandomContrast RandomCrop RandomFlip
    RandomRotation RandomTranslation RandomZoom ReLU RepeatVector Rescaling
    Reshape Resizing RNN SeparableConv1D SeparableConv2D SeparableConvolution1D
    SeparableConvolution2D SimpleRNN SimpleRNNCell Softmax SpatialDropout1D
    SpatialDropout2D SpatialDropout3D SpectralNormalization StackedRNNCells
    StringLookup Subtract TextVectorization TFOpLambda SlicingOpLambda
    ThresholdedReLU TimeDistributed UnitNormalization UpSampling1D UpSampling2D
    UpSampling3D Wrapper ZeroPadding1D ZeroPadding2D ZeroPadding3D
    """.split()
)


def supported_layers() -> list[str]:
    """Names of every Keras layer class the importer accepts."""
    return sorted(set(HANDLERS) | IDENTITY_LAYERS | {"InputLayer"})


def _handles(*class_names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for name in class_names:
            HANDLERS[name] = fn
        return fn

    return register


@dataclass(frozen=True)
class _Act:
    fn: str
    params: tuple[tuple[str, Any], ...] = ()


# Keras activation names and the IR activation each one is. hard_sigmoid and
# hard_silu differ between Keras 2 (slope 0.2) and Keras 3 (slope 1/6); the
# slope is filled in by parse_activation from the file's Keras version.
_ACTIVATION_NAMES: dict[str, _Act | None] = {
    "linear": None,
    "relu": _Act("relu"),
    "relu6": _Act("relu", (("max_value", 6.0),)),
    "leaky_relu": _Act("relu", (("negative_slope", 0.2),)),
    "elu": _Act("elu"),
    "selu": _Act("selu"),
    "gelu": _Act("gelu"),
    "sigmoid": _Act("sigmoid"),
    "hard_sigmoid": _Act("hard_sigmoid"),
    "hard_silu": _Act("hard_silu"),
    "hard_swish": _Act("hard_silu"),
    "tanh": _Act("tanh"),
    "softplus": _Act("softplus"),
    "softsign": _Act("softsign"),
    "exponential": _Act("exponential"),
    "swish": _Act("silu"),
    "silu": _Act("silu"),
    "mish": _Act("mish"),
    "softmax": _Act("softmax"),
    "log_softmax": _Act("log_softmax"),
    # Keras 3 only.
    "celu": _Act("celu"),
    "hard_tanh": _Act("hard_tanh"),
    "log_sigmoid": _Act("log_sigmoid"),
    "tanh_shrink": _Act("tanh_shrink"),
    "hard_shrink": _Act("hard_shrink", (("threshold", 0.5),)),
    "soft_shrink": _Act("soft_shrink", (("threshold", 0.5),)),
    "sparse_plus": _Act("sparse_plus"),
    "sparse_sigmoid": _Act("sparse_sigmoid"),
    "squareplus": _Act("squareplus", (("alpha", 4.0),)),
}


def parse_activation(spec: Any, keras_major: int, where: str) -> ops.Activation | None:
    """The IR activation for a Keras ``activation`` config entry (None: linear)."""
    name = spec
    if isinstance(spec, dict):
        # Keras 3 serialises built-in activations as {"class_name": "function",
        # "config": "relu", ...}; anything else is a custom object.
        if spec.get("class_name") == "function" and isinstance(spec.get("config"), str):
            name = spec["config"]
        else:
            name = spec.get("class_name", spec)
    if name is None:
        return None
    if not isinstance(name, str) or name not in _ACTIVATION_NAMES:
        raise UnsupportedLayerError(
            f"{where} uses activation {name!r}, which ismkernel does not support; "
            f"supported: {', '.join(sorted(_ACTIVATION_NAMES))}"
        )
    if keras_major < 3 and name == "hard_silu":
        raise UnsupportedLayerError(f"{where}: activation 'hard_silu' needs Keras 3")
    act = _ACTIVATION_NAMES[name]
    if act is None:
        return None
    params = dict(act.params)
    if act.fn in ("hard_sigmoid", "hard_silu"):
        params["alpha"] = 0.2 if keras_major < 3 else 1.0 / 6.0
    return ops.Activation(act.fn, **params)


# -- config helpers ---------------------------------------------------------


def _int(call: LayerCall, key: str, default: Any = None, minimum: int = 1) -> int:
    value = call.cfg.get(key, default)
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise UnsupportedLayerError(
                f"{call.where()}: '{key}' = {value!r}; a 1-D layer needs one value"
            )
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UnsupportedLayerError(
            f"{call.where()}: '{key}' = {value!r}; expected an integer >= {minimum}"
        )
    return value


def _pair(call: LayerCall, key: str) -> tuple[int, int]:
    value = call.cfg.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and v >= 0 for v in value)
    ):
        raise UnsupportedLayerError(
            f"{call.where()}: '{key}' = {value!r}; expected an integer or a pair "
            "of non-negative integers"
        )
    return int(value[0]), int(value[1])


def _choice(call: LayerCall, key: str, allowed: tuple[str, ...], default: str) -> str:
    value = call.cfg.get(key, default)
    value = value.lower() if isinstance(value, str) else value
    if value not in allowed:
        raise UnsupportedLayerError(
            f"{call.where()}: {key}={value!r} is not supported; supported: "
            f"{', '.join(allowed)}"
        )
    return value


def _channels_last(call: LayerCall) -> None:
    _choice(call, "data_format", ("channels_last",), "channels_last")


def _per_sample_axis(call: LayerCall, axis: Any, rank: int) -> int:
    """A Keras axis (counting the batch axis) as a non-negative per-sample axis."""
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise UnsupportedLayerError(
                f"{call.where()}: axis={axis!r}; only a single axis is supported"
            )
        axis = axis[0]
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise UnsupportedLayerError(f"{call.where()}: axis={axis!r} is not an integer")
    per_sample = axis - 1 if axis > 0 else axis + rank
    if axis == 0 or not 0 <= per_sample < rank:
        raise UnsupportedLayerError(
            f"{call.where()}: axis={axis} is out of range for inputs of rank "
            f"{rank + 1} (batch axis included), or is the batch axis"
        )
    return per_sample


def _with_activation(call: LayerCall, node: str) -> list[str]:
    act = parse_activation(call.cfg.get("activation"), call.keras_major, call.where())
    if act is None:
        return [node]
    return [call.add(act, [node], suffix="/activation")]


# -- handlers ---------------------------------------------------------------


@_handles("Conv1D", "Convolution1D")
def _conv1d(call: LayerCall, xs: list[str]) -> list[str]:
    _channels_last(call)
    (shape,) = call.in_shapes(xs, rank=2)
    op = ops.Conv1D(
        n_filters=_int(call, "filters"),
        kernel_size=_int(call, "kernel_size"),
        stride=_int(call, "strides", 1),
        dilation=_int(call, "dilation_rate", 1),
        padding=_choice(call, "padding", ops.CONV_PADDINGS, "valid"),
        groups=_int(call, "groups", 1),
        use_bias=bool(call.cfg.get("use_bias", True)),
    )
    n_channels = shape[1]
    if n_channels % op.groups or op.n_filters % op.groups:
        raise ShapeError(
            f"{call.where()}: {n_channels} input channels and {op.n_filters} "
            f"filters do not split into {op.groups} groups"
        )
    expected = {"kernel": (op.kernel_size, n_channels // op.groups, op.n_filters)}
    if op.use_bias:
        expected["bias"] = (op.n_filters,)
    node = call.add(op, xs, weights=call.weights(expected))
    return _with_activation(call, node)


def _ints(call: LayerCall, key: str, n: int, default: Any, minimum: int) -> list[int]:
    """A per-spatial-axis setting of an ``n``-D layer as ``n`` integers."""
    value = call.cfg.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value] * n
    if (
        not isinstance(value, (list, tuple))
        or len(value) != n
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum
            for v in value
        )
    ):
        raise UnsupportedLayerError(
            f"{call.where()}: '{key}' = {value!r}; expected {n} integer(s) >= {minimum}"
        )
    return [int(v) for v in value]


@_handles(
    "Conv1DTranspose",
    "Convolution1DTranspose",
    "Conv2DTranspose",
    "Convolution2DTranspose",
)
def _conv_transpose(call: LayerCall, xs: list[str]) -> list[str]:
    """A transposed convolution along the length: ZeroInsert1D (stride > 1),
    a Crop1D where the padding is negative, and a Conv1D with the kernel
    reversed (``ismkernel.io.transposed``). A 2-D one must act on a
    ``(seq_len, 1, n_channels)`` or ``(1, seq_len, n_channels)`` tensor with
    a kernel of 1 on the size-1 axis (BPNet's profile head, between two
    Reshapes, which the Reshape handler reads through)."""
    _channels_last(call)
    n = 2 if "2D" in call.layer_class else 1
    (shape,) = call.in_shapes(xs, rank=2 if n == 1 else None)
    if len(shape) != n + 1 or shape[-1] is None:
        raise ShapeError(
            f"{call.where()} expects inputs of shape (seq_len, 1, n_channels) or "
            f"(1, seq_len, n_channels) per sample, with a fixed number of "
            f"channels, got {shape}"
        )
    kernel_size = _ints(call, "kernel_size", n, None, 1)
    strides = _ints(call, "strides", n, 1, 1)
    dilation = _ints(call, "dilation_rate", n, 1, 1)
    padding = _choice(call, "padding", ("valid", "same"), "valid")
    out_pad = call.cfg.get("output_padding")
    out_pad = None if out_pad is None else _ints(call, "output_padding", n, None, 0)
    if _int(call, "groups", 1) != 1:
        raise UnsupportedLayerError(
            f"{call.where()}: groups={call.cfg['groups']!r}; Keras's transposed "
            "convolutions have no groups, so this file was edited by hand. Save "
            "the layer as Keras writes it"
        )
    axis = 0
    if n == 2:
        axis = _length_axis(call, shape, kernel_size, strides, out_pad)
    k, s, d = kernel_size[axis], strides[axis], dilation[axis]
    o_pad = None if out_pad is None else out_pad[axis]
    if o_pad is not None and o_pad >= s:
        raise UnsupportedLayerError(
            f"{call.where()}: output_padding={call.cfg['output_padding']!r} is not "
            f"smaller than strides={call.cfg.get('strides')!r}, which Keras itself "
            "refuses; save the layer with an output_padding below the stride"
        )
    # The output length (L - 1) * s + extra and TensorFlow's left padding of
    # the forward convolution whose gradient this is, as Keras computes them
    # (Keras 2 conv_utils.deconv_output_length, Keras 3
    # compute_conv_transpose_output_shape: the same numbers).
    span = (k - 1) * d + 1
    if padding == "valid":
        extra = max(span, s) if o_pad is None else span + o_pad
        pad_left = 0
    else:
        extra = s if o_pad is None else span % 2 + o_pad
        pad_left = max(span - extra, 0) // 2
    n_channels = shape[-1]
    length = shape[axis]
    x = xs[0]
    if n == 2:
        x = _squeezed(call, x, (length, n_channels))
    n_filters = _int(call, "filters")
    use_bias = bool(call.cfg.get("use_bias", True))
    expected = {"kernel": tuple(kernel_size) + (n_filters, n_channels)}
    if use_bias:
        expected["bias"] = (n_filters,)
    w = call.weights(expected)
    # Keras keeps (taps..., n_filters, n_channels); the convolution reads the
    # taps in reverse as (taps, n_channels, n_filters).
    kernel = w["kernel"].reshape(k, n_filters, n_channels)[::-1].transpose(0, 2, 1)
    weights = {"kernel": np.ascontiguousarray(kernel)}
    if use_bias:
        weights["bias"] = w["bias"]
    geometry = transposed_geometry(k, s, d, pad_left, extra, length)
    conv = ops.Conv1D(n_filters=n_filters, kernel_size=k, dilation=d, use_bias=use_bias)
    for op, suffix in transposed_ops(geometry, conv):
        w_op = weights if isinstance(op, ops.Conv1D) else None
        x = call.add(op, [x], weights=w_op, suffix=suffix)
    (y,) = _with_activation(call, x)
    if n == 2:
        out_len = call.builder.graph.nodes[y].shape[0]
        target = (out_len, 1, n_filters) if axis == 0 else (1, out_len, n_filters)
        if None in target:
            raise ShapeError(f"{call.where()} needs a fixed input length")
        y = call.add(ops.Reshape(target), [y], suffix="/expand")
    return [y]


def _length_axis(
    call: LayerCall,
    shape: tuple,
    kernel_size: list[int],
    strides: list[int],
    out_pad: list[int] | None,
) -> int:
    """Which spatial axis of a 2-D transposed convolution's input is the
    length: the other must have size 1, a kernel of 1, stride 1 and no output
    padding, so the layer is a 1-D one along the length."""
    for other in (1, 0):
        if shape[other] == 1 and kernel_size[other] == 1:
            break
    else:
        raise UnsupportedLayerError(
            f"{call.where()}: kernel_size={tuple(kernel_size)} on an input of shape "
            f"{tuple(shape)}; only a kernel of 1 on a size-1 axis, (k, 1) on "
            "(seq_len, 1, n_channels) or (1, k) on (1, seq_len, n_channels), is "
            "a 1-D transposed convolution ismkernel computes. Reshape the "
            "sequence to (seq_len, 1, n_channels) and give the kernel a width of 1"
        )
    if strides[other] != 1 or (out_pad is not None and out_pad[other] != 0):
        raise UnsupportedLayerError(
            f"{call.where()}: strides={tuple(strides)}, output_padding="
            f"{None if out_pad is None else tuple(out_pad)} widen the size-1 axis "
            f"{other + 1}; only stride 1 and output_padding 0 along it keep the "
            "layer 1-D"
        )
    return 1 - other


def _squeezed(call: LayerCall, x: str, shape: tuple) -> str:
    """``x`` as a ``(seq_len, n_channels)`` node: the node a Reshape made it
    from when that has this shape, else a Reshape of it (correct, but with no
    incremental rule)."""
    graph = call.builder.graph
    source = _row_major_source(graph, x)
    if graph.nodes[source].shape == tuple(shape):
        return source
    if None in shape:
        raise ShapeError(f"{call.where()} needs a fixed input length")
    return call.add(ops.Reshape(tuple(shape)), [x], suffix="/squeeze")


def _row_major_source(graph, x: str) -> str:
    """The first node up a chain of Reshapes (and row-major Flattens) from
    ``x``: its values, read row-major, are ``x``'s."""
    node = graph.nodes[x]
    while isinstance(node.op, ops.Reshape) or (
        isinstance(node.op, ops.Flatten) and not node.op.channels_first
    ):
        node = graph.nodes[node.inputs[0]]
    return node.name


@_handles("Dense")
def _dense(call: LayerCall, xs: list[str]) -> list[str]:
    (shape,) = call.in_shapes(xs)
    if not shape or shape[-1] is None:
        raise ShapeError(f"{call.where()} needs a fixed last axis, got shape {shape}")
    op = ops.Dense(
        units=_int(call, "units"), use_bias=bool(call.cfg.get("use_bias", True))
    )
    expected = {"kernel": (shape[-1], op.units)}
    if op.use_bias:
        expected["bias"] = (op.units,)
    node = call.add(op, xs, weights=call.weights(expected))
    return _with_activation(call, node)


@_handles("MaxPooling1D", "MaxPool1D", "AveragePooling1D", "AvgPool1D")
def _pool1d(call: LayerCall, xs: list[str]) -> list[str]:
    _channels_last(call)
    call.in_shapes(xs, rank=2)
    pool_size = _int(call, "pool_size", 2)
    strides = call.cfg.get("strides")
    op = ops.Pool1D(
        mode="max" if call.layer_class.startswith("Max") else "average",
        pool_size=pool_size,
        stride=pool_size if strides is None else _int(call, "strides"),
        padding=_choice(call, "padding", ops.POOL_PADDINGS, "valid"),
    )
    return [call.add(op, xs)]


@_handles(
    "GlobalAveragePooling1D", "GlobalAvgPool1D", "GlobalMaxPooling1D", "GlobalMaxPool1D"
)
def _global_pool1d(call: LayerCall, xs: list[str]) -> list[str]:
    call.in_shapes(xs, rank=2)
    fmt = _choice(
        call, "data_format", ("channels_last", "channels_first"), "channels_last"
    )
    op = ops.GlobalPool1D(
        mode="max" if "Max" in call.layer_class else "average",
        axis=0 if fmt == "channels_last" else 1,
        keepdims=bool(call.cfg.get("keepdims", False)),
    )
    return [call.add(op, xs)]


@_handles("Cropping1D")
def _cropping1d(call: LayerCall, xs: list[str]) -> list[str]:
    call.in_shapes(xs, rank=2)
    start, end = _pair(call, "cropping")
    return [call.add(ops.Crop1D(start, end), xs)]


@_handles("ZeroPadding1D")
def _zero_padding1d(call: LayerCall, xs: list[str]) -> list[str]:
    call.in_shapes(xs, rank=2)
    left, right = _pair(call, "padding")
    return [call.add(ops.ZeroPad1D(left, right), xs)]


@_handles("UpSampling1D")
def _upsampling1d(call: LayerCall, xs: list[str]) -> list[str]:
    call.in_shapes(xs, rank=2)
    return [call.add(ops.UpSample1D(_int(call, "size", 2)), xs)]


@_handles("Activation")
def _activation(call: LayerCall, xs: list[str]) -> list[str]:
    call.in_shapes(xs)
    act = parse_activation(call.cfg.get("activation"), call.keras_major, call.where())
    return xs if act is None else [call.add(act, xs)]


def _float(call: LayerCall, key: str, default: float | None) -> float | None:
    value = call.cfg.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnsupportedLayerError(
            f"{call.where()}: '{key}' = {value!r} is not a number"
        )
    return float(value)


@_handles("ReLU")
def _relu(call: LayerCall, xs: list[str]) -> list[str]:
    call.in_shapes(xs)
    op = ops.Activation(
        "relu",
        negative_slope=_float(call, "negative_slope", 0.0),
        max_value=_float(call, "max_value", None),
        threshold=_float(call, "threshold", 0.0),
    )
    return [call.add(op, xs)]


@_handles("LeakyReLU")
def _leaky_relu(call: LayerCall, xs: list[str]) -> list[str]:
    call.in_shapes(xs)
    # Keras 2 names the slope "alpha", Keras 3 "negative_slope"; both default 0.3.
    key = "negative_slope" if "negative_slope" in call.cfg else "alpha"
    return [call.add(ops.Activation("relu", negative_slope=_float(call, key, 0.3)), xs)]


@_handles("ELU")
def _elu(call: LayerCall, xs: list[str]) -> list[str]:
    call.in_shapes(xs)
    return [call.add(ops.Activation("elu", alpha=_float(call, "alpha", 1.0)), xs)]


@_handles("Softmax")
def _softmax(call: LayerCall, xs: list[str]) -> list[str]:
    (shape,) = call.in_shapes(xs)
    axis = _per_sample_axis(call, call.cfg.get("axis", -1), len(shape))
    return [call.add(ops.Activation("softmax", axis=axis), xs)]


@_handles("PReLU")
def _prelu(call: LayerCall, xs: list[str]) -> list[str]:
    (shape,) = call.in_shapes(xs)
    shared = call.cfg.get("shared_axes") or []
    if isinstance(shared, int):
        shared = [shared]
    shared = {_per_sample_axis(call, a, len(shape)) for a in shared}
    alpha_shape = tuple(1 if i in shared else d for i, d in enumerate(shape))
    if None in alpha_shape:
        raise ShapeError(
            f"{call.where()}: a per-position alpha needs a fixed input length, got "
            f"shape {shape}"
        )
    return [call.add(ops.PReLU(), xs, weights=call.weights({"alpha": alpha_shape}))]


@_handles("BatchNormalization")
def _batch_norm(call: LayerCall, xs: list[str]) -> list[str]:
    (shape,) = call.in_shapes(xs)
    axis = _per_sample_axis(call, call.cfg.get("axis", -1), len(shape))
    n = shape[axis]
    if n is None:
        raise ShapeError(f"{call.where()} normalises an axis of unknown size")
    center = bool(call.cfg.get("center", True))
    scale = bool(call.cfg.get("scale", True))
    names = (["gamma"] if scale else []) + (["beta"] if center else [])
    w = call.weights({k: (n,) for k in names + ["moving_mean", "moving_variance"]})
    eps = np.float32(_float(call, "epsilon", 1e-3))
    # The order of TensorFlow's inference batch norm, in float32, so results
    # match its rounding: inv = rsqrt(var + eps) * gamma; x * inv + (beta - mean * inv).
    inv = (np.float32(1) / np.sqrt(w["moving_variance"] + eps)).astype(np.float32)
    if scale:
        inv = inv * w["gamma"]
    shift = -w["moving_mean"] * inv
    if center:
        shift = w["beta"] + shift
    bshape = [1] * len(shape)
    bshape[axis] = n
    weights = {
        "scale": inv.astype(np.float32).reshape(bshape),
        "shift": shift.astype(np.float32).reshape(bshape),
    }
    return [call.add(ops.ChannelAffine(axis=axis), xs, weights=weights)]


@_handles("LayerNormalization")
def _layer_norm(call: LayerCall, xs: list[str]) -> list[str]:
    (shape,) = call.in_shapes(xs)
    if _per_sample_axis(call, call.cfg.get("axis", -1), len(shape)) != len(shape) - 1:
        raise UnsupportedLayerError(
            f"{call.where()}: only normalisation over the last (channel) axis is "
            f"supported, got axis={call.cfg.get('axis')!r}"
        )
    if call.cfg.get("rms_scaling"):
        raise UnsupportedLayerError(
            f"{call.where()}: rms_scaling=True is not supported"
        )
    op = ops.LayerNorm(
        epsilon=_float(call, "epsilon", 1e-3),
        center=bool(call.cfg.get("center", True)),
        scale=bool(call.cfg.get("scale", True)),
    )
    w = call.weights({k: (shape[-1],) for k in op.weight_names})
    return [call.add(op, xs, weights=w)]


@_handles("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
def _merge(call: LayerCall, xs: list[str]) -> list[str]:
    call.in_shapes(xs, n_inputs=None)
    return [call.add(ops.Merge(call.layer_class.lower()), xs)]


@_handles("Concatenate")
def _concatenate(call: LayerCall, xs: list[str]) -> list[str]:
    shapes = call.in_shapes(xs, n_inputs=None)
    axis = _per_sample_axis(call, call.cfg.get("axis", -1), len(shapes[0]))
    return [call.add(ops.Concatenate(axis), xs)]


@_handles("Flatten")
def _flatten(call: LayerCall, xs: list[str]) -> list[str]:
    call.in_shapes(xs)
    fmt = _choice(
        call, "data_format", ("channels_last", "channels_first"), "channels_last"
    )
    if fmt == "channels_first":
        return [call.add(ops.Flatten(channels_first=True), xs)]
    # A row-major flatten of a reshape is one of the reshape's source.
    source = _row_major_source(call.builder.graph, xs[0])
    if len(call.builder.graph.nodes[source].shape) == 1:
        return [source]
    return [call.add(ops.Flatten(), [source])]


@_handles("Reshape")
def _reshape(call: LayerCall, xs: list[str]) -> list[str]:
    (shape,) = call.in_shapes(xs)
    target = call.cfg.get("target_shape")
    if not isinstance(target, (list, tuple)) or not all(
        isinstance(d, int) and (d > 0 or d == -1) for d in target
    ):
        raise UnsupportedLayerError(
            f"{call.where()}: target_shape={target!r} is not a tuple of positive "
            "integers (with at most one -1)"
        )
    target = list(target)
    if target.count(-1) > 1:
        raise UnsupportedLayerError(
            f"{call.where()}: target_shape has more than one -1"
        )
    if None in shape:
        raise ShapeError(f"{call.where()} needs a fixed input shape, got {shape}")
    if -1 in target:
        known = int(np.prod([d for d in target if d != -1]))
        total = int(np.prod(shape))
        if total % known:
            raise ShapeError(
                f"{call.where()}: cannot reshape {shape} to {tuple(target)}"
            )
        target[target.index(-1)] = total // known
    # Reshapes compose: read the first node up a chain of them, and add none
    # where the result has that node's shape (BPNet's Reshape back after its
    # transposed convolution).
    source = _row_major_source(call.builder.graph, xs[0])
    if call.builder.graph.nodes[source].shape == tuple(target):
        return [source]
    return [call.add(ops.Reshape(tuple(target)), [source])]
