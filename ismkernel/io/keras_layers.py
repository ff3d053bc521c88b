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
    return [call.add(ops.Flatten(channels_first=fmt == "channels_first"), xs)]


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
    return [call.add(ops.Reshape(tuple(target)), xs)]
