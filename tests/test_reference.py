"""The reference backend, op by op, against tests/naive.py and scalar formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from naive import conv1d, padding, pool1d

from ismkernel.backends import reference
from ismkernel.ir import Graph, Node, conv_padding
from ismkernel.ir import nodes as ops


def one_op_graph(op, in_shape, weights=None, n_inputs=1):
    graph = Graph()
    names = []
    for i in range(n_inputs):
        names.append(graph.add(Node(f"in{i}", ops.Input(tuple(in_shape)))))
    graph.inputs = names
    graph.add(Node("op", op, tuple(names), weights or {}))
    graph.outputs = ["op"]
    graph.output_names = ["op"]
    return graph


@st.composite
def conv_cases(draw):
    kernel_size = draw(st.integers(1, 6))
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 3))
    mode = draw(st.sampled_from(ops.CONV_PADDINGS))
    groups = draw(st.sampled_from([1, 2, 3]))
    n_channels = groups * draw(st.integers(1, 3))
    n_filters = groups * draw(st.integers(1, 3))
    span = (kernel_size - 1) * dilation + 1
    seq_len = draw(st.integers(span if mode == "valid" else 1, 20))
    return kernel_size, stride, dilation, mode, groups, n_channels, n_filters, seq_len


@settings(max_examples=60, deadline=None)
@given(conv_cases(), st.booleans(), st.integers(0, 2**31))
def test_conv1d_against_loops(case, use_bias, seed):
    kernel_size, stride, dilation, mode, groups, n_channels, n_filters, seq_len = case
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(kernel_size, n_channels // groups, n_filters)).astype(
        np.float32
    )
    bias = rng.normal(size=n_filters).astype(np.float32)
    op = ops.Conv1D(n_filters, kernel_size, stride, dilation, mode, groups, use_bias)
    weights = {"kernel": kernel, "bias": bias} if use_bias else {"kernel": kernel}
    graph = one_op_graph(op, (seq_len, n_channels), weights)
    x = rng.normal(size=(2, seq_len, n_channels))
    (comp,) = reference.forward(graph, [x])
    ref = conv1d(x, kernel, bias if use_bias else None, stride, dilation, mode, groups)
    assert comp.shape == ref.shape == (2,) + graph.nodes["op"].shape
    np.testing.assert_allclose(comp, ref, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, 4),
    st.sampled_from(["max", "average"]),
    st.sampled_from(ops.POOL_PADDINGS),
    st.integers(5, 23),
    st.integers(0, 2**31),
)
def test_pool1d_against_loops(pool_size, stride, mode, pad, seq_len, seed):
    rng = np.random.default_rng(seed)
    graph = one_op_graph(ops.Pool1D(mode, pool_size, stride, pad), (seq_len, 3))
    x = rng.normal(size=(2, seq_len, 3))
    (comp,) = reference.forward(graph, [x])
    np.testing.assert_allclose(
        comp, pool1d(x, pool_size, stride, mode, pad), rtol=1e-12
    )


@given(st.integers(1, 40), st.integers(1, 7), st.integers(1, 4), st.integers(1, 4))
def test_conv_padding_rule(seq_len, kernel_size, stride, dilation):
    span = (kernel_size - 1) * dilation + 1
    for mode in ops.CONV_PADDINGS:
        left, right, out_len = conv_padding(
            seq_len, kernel_size, stride, dilation, mode
        )
        assert (left, right) == padding(seq_len, span, stride, mode)
        if mode == "same":
            assert out_len == math.ceil(seq_len / stride)
            assert right - left in (0, 1)  # the odd extra column goes right


def _scalar(fn, v, **kw):
    """Activation definitions written from the Keras docs, one float at a time."""
    sig = 1 / (1 + math.exp(-v))
    sp = math.log1p(math.exp(v)) if v < 30 else v
    return {
        "linear": v,
        "elu": v if v > 0 else kw.get("alpha", 1.0) * (math.exp(v) - 1),
        "selu": 1.0507009873554805
        * (v if v > 0 else 1.6732632423543772 * (math.exp(v) - 1)),
        "gelu": 0.5 * v * (1 + math.erf(v / math.sqrt(2))),
        "gelu_tanh": 0.5
        * v
        * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
        "sigmoid": sig,
        "hard_sigmoid_k2": min(max(0.2 * v + 0.5, 0), 1),
        "hard_sigmoid_k3": min(max(v + 3, 0), 6) / 6,
        "hard_silu": v * min(max(v + 3, 0), 6) / 6,
        "tanh": math.tanh(v),
        "softplus": sp,
        "softsign": v / (1 + abs(v)),
        "exponential": math.exp(v),
        "silu": v * sig,
        "mish": v * math.tanh(sp),
        "celu": max(v, 0)
        + kw.get("alpha", 1.0) * (math.exp(min(v, 0) / kw.get("alpha", 1.0)) - 1),
        "hard_tanh": min(max(v, -1), 1),
        "log_sigmoid": math.log(sig),
        "tanh_shrink": v - math.tanh(v),
        "hard_shrink": v if abs(v) > kw.get("threshold", 0) else 0.0,
        "soft_shrink": math.copysign(max(abs(v) - kw.get("threshold", 0), 0), v),
        "sparse_plus": 0.0 if v <= -1 else (v if v >= 1 else (v + 1) ** 2 / 4),
        "sparse_sigmoid": 0.0 if v <= -1 else (1.0 if v >= 1 else (v + 1) / 2),
        "squareplus": (v + math.sqrt(v * v + kw.get("alpha", 0))) / 2,
        "erf": math.erf(v),
        "abs": abs(v),
        "reciprocal": 1 / v if v else math.inf,
        "sqrt": math.sqrt(v) if v >= 0 else math.nan,
        "clip": min(max(v, kw.get("threshold", 0)), kw.get("max_value", 1)),
    }[fn]


ACTS = [
    ("linear", {}),
    ("elu", {}),
    ("elu", {"alpha": 0.3}),
    ("selu", {}),
    ("gelu", {}),
    ("gelu_tanh", {"approximate": True}),
    ("sigmoid", {}),
    ("hard_sigmoid_k2", {"alpha": 0.2}),
    ("hard_sigmoid_k3", {"alpha": 1 / 6}),
    ("hard_silu", {"alpha": 1 / 6}),
    ("tanh", {}),
    ("softplus", {}),
    ("softsign", {}),
    ("exponential", {}),
    ("silu", {}),
    ("mish", {}),
    ("celu", {}),
    ("celu", {"alpha": 0.5}),
    ("hard_tanh", {}),
    ("log_sigmoid", {}),
    ("tanh_shrink", {}),
    ("hard_shrink", {"threshold": 0.5}),
    ("soft_shrink", {"threshold": 0.5}),
    ("sparse_plus", {}),
    ("sparse_sigmoid", {}),
    ("squareplus", {"alpha": 4.0}),
    ("erf", {}),
    ("abs", {}),
    ("reciprocal", {}),
    ("sqrt", {}),
    ("clip", {"threshold": -0.5, "max_value": 2.0}),
]


def test_log_activation():
    x = np.linspace(0.01, 8, 50)
    comp = reference.apply_activation(ops.Activation("log"), x[None])[0]
    np.testing.assert_allclose(comp, np.log(x), rtol=1e-12)


@pytest.mark.parametrize("name,kw", ACTS)
def test_activation_against_scalar_definition(name, kw):
    fn = name.split("_k")[0].replace("gelu_tanh", "gelu")
    x = np.linspace(-8, 8, 161)
    with np.errstate(divide="ignore", invalid="ignore"):  # reciprocal at 0
        comp = reference.apply_activation(ops.Activation(fn, **kw), x[None])[0]
    ref = [_scalar(name, v, **kw) for v in x]
    np.testing.assert_allclose(comp, ref, rtol=1e-12, atol=1e-12)


def _relu_scalar(v, slope, max_value, threshold):
    if v >= max_value if max_value is not None else False:
        return max_value
    if v > threshold:
        return v if (max_value is None or v >= 0) else 0.0
    return -slope * (threshold - v)


@pytest.mark.parametrize(
    "slope,max_value,threshold",
    [
        (0, None, 0),
        (0.1, None, 0),
        (0.1, 0.8, 0.2),
        (0, 6.0, 0),
        (0, None, 0.3),
        (0.3, 1.0, 0),
    ],
)
def test_relu_family(slope, max_value, threshold):
    x = np.linspace(-3, 8, 111)
    op = ops.Activation(
        "relu", negative_slope=slope, max_value=max_value, threshold=threshold
    )
    comp = reference.apply_activation(op, x)
    ref = [_relu_scalar(v, slope, max_value, threshold) for v in x]
    np.testing.assert_allclose(comp, ref, rtol=1e-12, atol=1e-12)


def test_softmax_and_log_softmax_over_either_axis():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 3)) * 30  # large values: the max shift matters
    for axis in (-1, 0):
        comp = reference.apply_activation(ops.Activation("softmax", axis=axis), x)
        batch_axis = axis if axis < 0 else axis + 1
        e = np.exp(x - x.max(axis=batch_axis, keepdims=True))
        np.testing.assert_allclose(
            comp, e / e.sum(axis=batch_axis, keepdims=True), rtol=1e-12
        )
        log = reference.apply_activation(ops.Activation("log_softmax", axis=axis), x)
        np.testing.assert_allclose(np.exp(log), comp, rtol=1e-10)


def test_float32_stays_float32():
    x = np.linspace(-3, 3, 13, dtype=np.float32)[None]
    for fn in ops.ACTIVATIONS:
        with np.errstate(invalid="ignore", divide="ignore"):  # log, reciprocal
            y = reference.apply_activation(ops.Activation(fn), x)
        assert y.dtype == np.float32, fn


def test_zero_insertion_puts_row_i_at_i_times_stride():
    from ismkernel.ir import Node
    from ismkernel.ir import nodes as ops

    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    for stride in (1, 2, 3):
        got = reference.apply(Node("z", ops.ZeroInsert1D(stride), ("x",)), [x])
        want = np.zeros((2, 4 * stride + 1, 3), np.float32)
        for i in range(5):
            want[:, i * stride] = x[:, i]
        np.testing.assert_array_equal(got, want)
