"""Transposed convolutions (Keras Conv1DTranspose and Conv2DTranspose, ONNX
ConvTranspose) against the frameworks that wrote them and against a naive
transposed convolution; fastISM's BPNet; and the importers' refusals."""

from __future__ import annotations

import json
from pathlib import Path

import naive
import numpy as np
import pytest
from conftest import assert_close_keras, assert_same_ism
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ismkernel
from ismkernel.errors import ModelFileError, ShapeError, UnsupportedLayerError
from ismkernel.io.keras import build_graph
from ismkernel.model import Model

FIXTURES = Path(__file__).parent / "fixtures" / "transposed"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
BPNET = sorted(
    (f for f, e in MANIFEST.items() if f.endswith(".k2.h5") and "bpnet" in f),
    key=lambda f: int(MANIFEST[f]["model"].rsplit("_", 1)[1]),
)
FILES = sorted(f for f in MANIFEST if f not in BPNET)
# fastISM's BPNet is ten 64-channel layers deep: Keras's own float32 outputs
# differ from the float64 result by up to 1.8e-6 x max|output|, so its
# tolerance is scaled by the output's size (5e-6 x max|output|, rtol 1e-5).
BPNET_ATOL = 5e-6


def _assert_close(comp, ref, name, what):
    if "bpnet" in name:
        np.testing.assert_allclose(
            comp, ref, rtol=1e-5, atol=BPNET_ATOL * np.abs(ref).max(), err_msg=what
        )
    else:
        assert_close_keras(comp, ref, what)


def _data(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / MANIFEST[name]["npz"]) as d:
        return {k: d[k] for k in d.files}


def test_fixtures_cover_every_framework_and_exporter():
    entries = list(MANIFEST.values())
    assert {e["framework"] for e in entries} == {
        "keras2",
        "keras3",
        "keras3-torch",
        "torch",
    }
    exporters = {e.get("exporter", "").split(" ")[0] for e in entries}
    assert exporters >= {"dynamo", "torchscript", "tf2onnx", "keras"}
    assert {f.split(".", 1)[1] for f in FILES} == {
        "k2.h5",
        "k3.keras",
        "k3.h5",
        "onnx",
        "ts.onnx",
        "k2.tf2onnx.onnx",
        "k3.keras3.onnx",
    }
    assert [MANIFEST[f]["model"] for f in BPNET] == [
        "fastism_bpnet_100",
        "fastism_bpnet_500",
        "fastism_bpnet_1000",
    ]


@pytest.mark.parametrize(
    "name, kind",
    [
        (f, kind)
        for f in FILES
        for kind in ("onehot", "float")
        if f"x_{kind}_0" in _data(f)
    ],
)
def test_predict_matches_framework(name, kind):
    model = ismkernel.load_model(FIXTURES / name)
    data = _data(name)
    comp = model.predict(data[f"x_{kind}_0"])
    assert len(comp) == MANIFEST[name]["n_outputs"]
    for k, y in enumerate(comp):
        _assert_close(y, data[f"y_{kind}_{k}"], name, f"{name} output {k}")


@pytest.mark.parametrize("name", FILES)
def test_ism_matches_framework_mutants_and_naive(name):
    """Naive ISM (reference backend) against the framework's own predictions
    on the mutants; the cpu backend's incremental ISM, at every position,
    against naive ISM."""
    model = ismkernel.load_model(FIXTURES / name)
    data = _data(name)
    x = data["x_onehot_0"][:1]
    ref = ismkernel.ism(
        model,
        x,
        positions=data["positions"],
        alternatives=data["alternatives"],
        backend="reference",
    )
    for k, out in enumerate(ref.outputs):
        _assert_close(out[0], data[f"ism_{k}"], name, f"{name} ISM output {k}")
    x = data["x_onehot_0"][:2]
    ref = ismkernel.ism(model, x, backend="reference")
    comp = ismkernel.ism(model, x, backend="cpu", batch_size=7)
    assert_same_ism(ref, comp, name)


def test_transposed_layers_become_zero_insert_crop_and_conv():
    """Each layer's nodes carry its name and class; a stride inserts rows, a
    negative padding crops them, and the Reshapes around a 2-D layer vanish."""
    graph = ismkernel.load_model(FIXTURES / "keras_2d_heads.k2.h5").graph
    kinds = {n.name: n.op.kind for n in graph.nodes.values()}
    # Only the output that keeps Keras's (L, 1, C) shape is reshaped.
    assert [n for n, kind in kinds.items() if kind == "Reshape"] == ["dilated/expand"]
    keras_shape = _data("keras_2d_heads.k2.h5")["y_onehot_3"].shape[1:]
    assert graph.nodes["dilated/expand"].shape == keras_shape
    assert kinds["up_l1c/zero_insert"] == "ZeroInsert1D"
    assert kinds["up_l1c"] == "Conv1D"
    head = graph.nodes["bpnet_head"]
    assert head.where() == "layer 'bpnet_head' (Conv2DTranspose)"
    assert head.op.padding == "same" and head.inputs == ("body/activation",)
    assert graph.nodes["flat"].inputs == ("up_l1c",)
    onnx_graph = ismkernel.load_model(FIXTURES / "torch_1d_grid.onnx").graph
    crops = [n for n in onnx_graph.nodes.values() if n.op.kind == "Crop1D"]
    assert crops and all(n.layer_class == "ConvTranspose" for n in crops)
    assert not any(
        n.op.kind == "ZeroInsert1D" and n.op.stride == 1
        for n in onnx_graph.nodes.values()
    )


# -- fastISM's BPNet ---------------------------------------------------------


@pytest.mark.parametrize("name", BPNET)
def test_fastism_bpnet_imports_and_its_ism_is_exact(name):
    model = ismkernel.load_model(FIXTURES / name)
    data = _data(name)
    seq_len = model.inputs[0].shape[0]
    graph = model.graph
    assert graph.nodes["conv2d_transpose"].where() == (
        "layer 'conv2d_transpose' (Conv2DTranspose)"
    )
    x = data["x_onehot_0"]
    for k, y in enumerate(model.predict(x)):
        _assert_close(y, data[f"y_onehot_{k}"], name, f"{name} output {k}")
    positions, alts = data["positions"], data["alternatives"]
    kw = dict(positions=positions, alternatives=alts)
    ref = ismkernel.ism(model, x[:1], backend="reference", **kw)
    for k, out in enumerate(ref.outputs):
        _assert_close(out[0], data[f"ism_{k}"], name, f"{name} ISM output {k}")
    if seq_len <= 100:  # every position; longer ones at the stored positions
        kw = {}
        ref = ismkernel.ism(model, x[:1], backend="reference")
    comp = ismkernel.ism(model, x[:1], backend="cpu", **kw)
    assert_same_ism(ref, comp, name)
    plan = build_head_plan(model)
    assert plan.nodes["conv2d_transpose"].kind == "tile"


def build_head_plan(model):
    from ismkernel.plan import build_plan

    g = model.graph
    seq_len = g.nodes[g.inputs[0]].shape[0]
    return build_plan(g, g.inputs[0], {g.inputs[0]: (seq_len, 4)}, [seq_len // 2])


# -- random options against the naive transposed convolution -------------------


class _Weights:
    path = "memory"

    def __init__(self, arrays):
        self.arrays = arrays

    def read(self, call, names):
        return {n: self.arrays[call.layer][n] for n in names}


def _keras_model(seq_len, chain, weights):
    """A Keras 2 config of ``(class, config)`` layers in a chain, built by
    hand and read by the Keras importer."""
    layers = [
        {
            "class_name": "InputLayer",
            "name": "dna",
            "config": {"batch_input_shape": [None, seq_len, 4]},
            "inbound_nodes": [],
        }
    ]
    for j, (cls, cfg) in enumerate(chain):
        layers.append(
            {
                "class_name": cls,
                "name": cfg["name"],
                "config": cfg,
                "inbound_nodes": [[[layers[j]["name"], 0, 0, {}]]],
            }
        )
    config = {
        "class_name": "Functional",
        "config": {
            "name": "m",
            "layers": layers,
            "input_layers": [["dna", 0, 0]],
            "output_layers": [[layers[-1]["name"], 0, 0]],
        },
    }
    return build_graph(config, _Weights(weights), 2)


def _naive_ism(forward, x):
    """Every single-base mutant of one sequence through ``forward``."""
    seq_len = x.shape[0]
    out = np.zeros((seq_len, 4) + forward(x[None]).shape[1:])
    for p in range(seq_len):
        mutants = np.repeat(x[None], 4, axis=0)
        mutants[:, p] = np.eye(4)
        out[p] = forward(mutants)
    return out


def _check(model, forward, x):
    ref = forward(x)
    comp = model.predict(x)[0]
    np.testing.assert_allclose(comp, ref, rtol=1e-5, atol=1e-5)
    naive_ism = _naive_ism(forward, x[0])
    comp = ismkernel.ism(model, x[:1], backend="cpu").outputs[0][0]
    scale = np.abs(naive_ism).max()
    np.testing.assert_allclose(comp, naive_ism, rtol=0, atol=1e-4 * scale)


@st.composite
def _keras_options(draw):
    stride = draw(st.integers(1, 4))
    dilation = 1 if stride > 1 else draw(st.integers(1, 4))
    padding = draw(st.sampled_from(["valid", "same"]))
    kernel_size = draw(st.integers(1, 6))
    output_padding = draw(st.none() | st.integers(0, stride - 1))
    span = (kernel_size - 1) * dilation + 1
    seq_len = draw(st.integers(2, 9))
    return seq_len, kernel_size, stride, dilation, padding, output_padding, span


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_keras_options(), st.integers(0, 2**32 - 1), st.booleans())
def test_keras_conv_transpose_equals_naive(options, seed, two_d):
    """Keras's definition (deconv_output_length and TensorFlow's SAME padding)
    for random options, 1-D and as a (L, 1, C) 2-D layer."""
    seq_len, k, s, d, padding, op, span = options
    pad_left, out_len = naive.keras_conv_transpose_geometry(
        seq_len, k, s, d, padding, op
    )
    if out_len < 1:
        return
    rng = np.random.default_rng(seed)
    kernel = rng.normal(0, 0.5, (k, 3, 4)).astype(np.float32)  # (taps, out, in)
    bias = rng.normal(0, 0.5, 3).astype(np.float32)
    cfg = dict(
        filters=3,
        kernel_size=[k],
        strides=[s],
        dilation_rate=[d],
        padding=padding,
        output_padding=None if op is None else [op],
    )
    cfg["name"] = "tconv"
    if two_d:  # between Reshapes, as BPNet's profile head
        cfg = dict(
            cfg,
            kernel_size=[k, 1],
            strides=[s, 1],
            dilation_rate=[d, d],
            output_padding=None if op is None else [op, 0],
        )
        chain = [
            ("Reshape", dict(name="r1", target_shape=[-1, 1, 4])),
            ("Conv2DTranspose", cfg),
            ("Reshape", dict(name="r2", target_shape=[-1, 3])),
        ]
        w = {"kernel": kernel[:, None], "bias": bias}
    else:
        chain = [("Conv1DTranspose", cfg)]
        w = {"kernel": kernel, "bias": bias}
    graph = _keras_model(seq_len, chain, {"tconv": w})
    assert "Reshape" not in {n.op.kind for n in graph.nodes.values()}
    model = Model(graph)
    taps = kernel.transpose(0, 2, 1)  # (taps, in, out)

    def forward(xs):
        return naive.conv_transpose1d(xs, taps, bias, s, d, pad_left, out_len)

    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (2, seq_len))]
    _check(model, forward, x)


@st.composite
def _onnx_options(draw):
    stride = draw(st.integers(1, 4))
    dilation = draw(st.integers(1, 3))
    kernel_size = draw(st.integers(1, 5))
    span = (kernel_size - 1) * dilation + 1
    output_padding = draw(st.integers(0, max(stride, dilation) - 1))
    auto_pad = draw(
        st.sampled_from(["NOTSET", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"])
    )
    pads = (draw(st.integers(0, span + 1)), draw(st.integers(0, span + 1)))
    groups = draw(st.sampled_from([1, 2, 4]))
    seq_len = draw(st.integers(2, 9))
    output_shape = None
    if auto_pad == "NOTSET" and draw(st.booleans()):
        output_shape = (seq_len - 1) * stride + draw(
            st.integers(1, span + output_padding)
        )
    return (
        seq_len,
        kernel_size,
        stride,
        dilation,
        output_padding,
        auto_pad,
        pads,
        groups,
        output_shape,
    )


def _onnx_model(tmp_path, seq_len, weight, bias, attrs, name="m.onnx"):
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, seq_len])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(_onnx_options(), st.integers(0, 2**32 - 1))
def test_onnx_conv_transpose_equals_naive(tmp_path, options, seed):
    """The ONNX specification's ConvTranspose for random strides, dilations,
    pads, auto_pad, output_padding, output_shape and groups."""
    pytest.importorskip("onnx")
    seq_len, k, s, d, op, auto_pad, pads, groups, output_shape = options
    pad_left, out_len = naive.onnx_conv_transpose_geometry(
        seq_len, k, s, d, pads, op, auto_pad, output_shape
    )
    if out_len < 1:
        return
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.5, (4, 6 // groups if groups != 4 else 1, k))
    weight = weight.astype(np.float32)  # (in, out // groups, taps)
    bias = rng.normal(0, 0.5, weight.shape[1] * groups).astype(np.float32)
    attrs = dict(strides=[s], dilations=[d], output_padding=[op], group=groups)
    if auto_pad == "NOTSET":
        attrs["pads"] = list(pads)
    else:
        attrs["auto_pad"] = auto_pad
    if output_shape is not None:
        attrs["output_shape"] = [output_shape]
    path = _onnx_model(tmp_path, seq_len, weight, bias, attrs)
    model = ismkernel.load_model(path)
    taps = weight.transpose(2, 0, 1)  # (taps, in, out // groups)

    def forward(xs):  # (n, L, C) in the IR's layout
        return naive.conv_transpose1d(xs, taps, bias, s, d, pad_left, out_len, groups)

    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (2, seq_len))]
    ref = forward(x).transpose(0, 2, 1)
    comp = model.predict(x.transpose(0, 2, 1))[0]
    np.testing.assert_allclose(comp, ref, rtol=1e-5, atol=1e-5)
    naive_ism = _naive_ism(forward, x[0]).transpose(0, 1, 3, 2)
    comp = ismkernel.ism(model, x[:1].transpose(0, 2, 1), backend="cpu").outputs[0][0]
    np.testing.assert_allclose(
        comp, naive_ism, rtol=0, atol=1e-4 * np.abs(naive_ism).max()
    )


@pytest.mark.parametrize(
    "attrs",
    [
        dict(strides=[2], auto_pad="SAME_UPPER"),
        dict(strides=[3], auto_pad="SAME_UPPER"),  # an odd total padding
        dict(strides=[3], auto_pad="SAME_LOWER"),
        dict(strides=[3], auto_pad="SAME_UPPER", output_padding=[2]),
        dict(strides=[2], output_shape=[17], auto_pad="SAME_LOWER"),
        dict(strides=[2], output_shape=[17], auto_pad="SAME_UPPER"),
        dict(strides=[1], dilations=[2], pads=[5, 0]),
    ],
)
def test_onnx_padding_rules_match_onnx_reference_evaluator(tmp_path, attrs):
    """The padding rules the naive function and the importer follow are the
    ONNX reference implementation's (SAME_UPPER: the odd pad at the end).
    With ``output_shape`` and no auto_pad the specification splits the pads
    as SAME_LOWER does; the reference implementation leaves that case out,
    so only the hypothesis test above covers it."""
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.5, (4, 3, 4)).astype(np.float32)
    bias = rng.normal(0, 0.5, 3).astype(np.float32)
    path = _onnx_model(tmp_path, 8, weight, bias, attrs)
    x = rng.normal(0, 1, (2, 4, 8)).astype(np.float32)
    ref = ReferenceEvaluator(onnx.load(str(path))).run(None, {"x": x})[0]
    comp = ismkernel.load_model(path).predict(x)[0]
    assert_close_keras(comp, ref, str(attrs))


# -- refusals ----------------------------------------------------------------


_K2D = dict(filters=2, kernel_size=[3, 1], strides=[1, 1], padding="same")


@pytest.mark.parametrize(
    "cls, shape, cfg, match",
    [
        (
            "Conv2DTranspose",
            (6, 1, 4),
            dict(_K2D, kernel_size=[3, 3]),
            r"kernel_size=\(3, 3\) on an input of shape \(6, 1, 4\); only a kernel of 1 on a size-1 axis",
        ),
        ("Conv2DTranspose", (6, 2, 4), _K2D, r"only a kernel of 1 on a size-1 axis"),
        (
            "Conv2DTranspose",
            (6, 1, 4),
            dict(_K2D, strides=[1, 2]),
            r"strides=\(1, 2\).* widen the size-1 axis 2",
        ),
        (
            "Conv2DTranspose",
            (6, 1, 4),
            dict(_K2D, strides=[2, 1], output_padding=[1, 1]),
            r"widen the size-1 axis 2",
        ),
        (
            "Conv2DTranspose",
            (6, 4),
            _K2D,
            r"expects inputs of shape \(seq_len, 1, n_channels\)",
        ),
        (
            "Conv1DTranspose",
            (6, 4),
            dict(filters=2, kernel_size=[3], strides=[2], output_padding=[2]),
            r"output_padding=\[2\] is not smaller than strides=\[2\]",
        ),
        (
            "Conv1DTranspose",
            (6, 4),
            dict(filters=2, kernel_size=[3], groups=2),
            r"groups=2; Keras's transposed convolutions have no groups",
        ),
        (
            "Conv1DTranspose",
            (6, 4),
            dict(filters=2, kernel_size=[3], padding="causal"),
            r"padding='causal' is not supported; supported: valid, same",
        ),
        (
            "Conv1DTranspose",
            (6, 4),
            dict(filters=2, kernel_size=[3], data_format="channels_first"),
            r"data_format='channels_first' is not supported",
        ),
        (
            "Conv1DTranspose",
            (6, 4),
            dict(filters=2, kernel_size=[0]),
            r"'kernel_size' = \[0\]; expected 1 integer\(s\) >= 1",
        ),
    ],
)
def test_keras_refusals_name_the_layer_and_option(cls, shape, cfg, match):
    k = cfg["kernel_size"]
    w = {
        "kernel": np.zeros(tuple(k) + (2, shape[-1]), np.float32),
        "bias": np.zeros(2, np.float32),
    }
    chain = [
        ("Reshape", dict(name="r", target_shape=list(shape))),
        (cls, dict(cfg, name="tconv")),
    ]
    with pytest.raises(
        (UnsupportedLayerError, ShapeError), match=rf"layer 'tconv' \({cls}\).*{match}"
    ):
        _keras_model(int(np.prod(shape)) // 4, chain, {"tconv": w})


@pytest.mark.parametrize(
    "weight_shape, attrs, error, match",
    [
        (
            (4, 2, 1, 1, 3),
            {},
            UnsupportedLayerError,
            r"only 1-D transposed convolution",
        ),
        ((4, 2, 3, 3), {}, UnsupportedLayerError, r"spans the size-1 axis"),
        (
            (4, 2, 1, 3),
            dict(strides=[2, 2]),
            UnsupportedLayerError,
            r"strides=\[2, 2\]: only 1-D ops along the length axis",
        ),
        (
            (4, 2, 1, 3),
            dict(output_padding=[1, 1], strides=[1, 2]),
            UnsupportedLayerError,
            r"output_padding=\[1, 1\]: only 1-D ops",
        ),
        (
            (4, 2, 3),
            dict(kernel_shape=[5]),
            ModelFileError,
            r"kernel_shape=\[5\] does not match its weight",
        ),
        (
            (4, 2, 3),
            dict(group=3),
            ShapeError,
            r"in 3 group\(s\) does not fit an input of 4 channels",
        ),
        (
            (4, 2, 3),
            dict(pads=[9, 9]),
            UnsupportedLayerError,
            r"its pads \(9, 9\) leave no output row",
        ),
        (
            (4, 2, 3),
            dict(auto_pad="SAME"),
            UnsupportedLayerError,
            r"auto_pad='SAME' is not an ONNX padding mode",
        ),
    ],
)
def test_onnx_refusals_name_the_node_and_option(
    tmp_path, weight_shape, attrs, error, match
):
    from onnx import TensorProto, helper, numpy_helper

    two_d = len(weight_shape) == 4
    shape = ["n", 4, 1, 8] if two_d else ["n", 4, 8]
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros(weight_shape, np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(error, match=rf"node 'up' \(ConvTranspose\).*{match}"):
        ismkernel.load_model(path)
