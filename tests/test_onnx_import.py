"""ONNX import: every PyTorch-built fixture against PyTorch itself, ISM on the
engines, and a clear error for everything the importer refuses."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from conftest import (
    ONNX_FIXTURES,
    assert_close_keras,
    assert_same_ism,
    fixture_inputs,
    onnx_manifest,
    random_fasta,
)

import ismkernel
from ismkernel.errors import (
    BackendUnavailableError,
    ModelFileError,
    ShapeError,
    UnsupportedLayerError,
)
from ismkernel.plan import build_plan

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

MANIFEST = onnx_manifest()
FILES = sorted(MANIFEST)
ALTS = np.vstack([np.eye(4), np.zeros(4), np.full(4, 0.25)]).astype(np.float32)


def _data(name: str) -> dict[str, np.ndarray]:
    with np.load(ONNX_FIXTURES / MANIFEST[name]["npz"]) as d:
        return {k: d[k] for k in d.files}


def _x(xs):
    return xs if len(xs) > 1 else xs[0]


def test_there_are_enough_fixtures():
    models = {v["model"] for v in MANIFEST.values()}
    assert len(models) >= 12
    assert {v["exporter"] for v in MANIFEST.values()} == {"dynamo", "torchscript"}
    assert {v["layout"] for v in MANIFEST.values()} == {"ncl", "nlc", "nc1l"}
    assert {"bpnet", "basset"} <= models


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("kind", ["onehot", "float"])
def test_predict_matches_pytorch(name, kind):
    model = ismkernel.load_model(ONNX_FIXTURES / name)
    data = _data(name)
    comp = model.predict(_x(fixture_inputs(data, kind)))
    assert len(comp) == MANIFEST[name]["n_outputs"]
    for k, y in enumerate(comp):
        assert y.dtype == np.float32
        assert_close_keras(y, data[f"y_{kind}_{k}"], f"{name} output {k}")


@pytest.mark.parametrize("name", FILES)
def test_inputs_and_outputs_are_in_the_models_layout(name):
    model = ismkernel.load_model(ONNX_FIXTURES / name)
    data = _data(name)
    xs = fixture_inputs(data, "onehot")
    assert model.format == "onnx"
    assert "opset" in model.producer
    assert [tuple(s.shape) for s in model.inputs] == [x.shape[1:] for x in xs]
    for k, spec in enumerate(model.outputs):
        assert tuple(spec.shape) == data[f"y_onehot_{k}"].shape[1:]
    seq = model.inputs[0].shape
    layout = MANIFEST[name]["layout"]
    expected = {"ncl": (1, 0), "nlc": (0, 1), "nc1l": (1, None, 0)}[layout]
    assert model.input_perms[0] == expected
    assert seq[layout.index("c") - 1] == 4
    text = model.summary()
    assert "onnx" in text and model.input_names[0] in text


@pytest.mark.parametrize("name", FILES)
def test_naive_ism_matches_pytorch_mutants(name):
    model = ismkernel.load_model(ONNX_FIXTURES / name)
    data = _data(name)
    xs = [x[:1] for x in fixture_inputs(data, "onehot")]
    result = ismkernel.ism(
        model,
        _x(xs),
        positions=data["positions"],
        alternatives=data["alternatives"],
        backend="reference",
        batch_size=7,
    )
    for k, out in enumerate(result.outputs):
        assert_close_keras(out[0], data[f"ism_{k}"], f"{name} ISM output {k}")


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("kind", ["onehot", "float"])
def test_cpu_ism_equals_reference(name, kind):
    model = ismkernel.load_model(ONNX_FIXTURES / name)
    x = _x(fixture_inputs(_data(name), kind))
    ref = ismkernel.ism(model, x, backend="reference", alternatives=ALTS)
    cpu = ismkernel.ism(model, x, backend="cpu", alternatives=ALTS, batch_size=7)
    assert_same_ism(ref, cpu, name)


def test_the_incremental_plan_holds_for_pytorch_models():
    """Imported PyTorch models keep their incremental strategies: padded
    convolutions, crops and the mean over length are not dense."""
    model = ismkernel.load_model(ONNX_FIXTURES / "bpnet.onnx")
    name = model.graph.inputs[0]
    plan = build_plan(model.graph, name, {name: (64, 4)}, np.arange(64))
    convs = [
        p
        for name, p in plan.nodes.items()
        if model.graph.nodes[name].op.kind == "Conv1D"
    ]
    assert len(convs) == 7
    assert all(p.kind == "tile" for p in convs), plan.describe()
    assert "global-avg" in {p.strategy for p in plan.nodes.values()}
    assert plan.flops_plan < plan.flops_naive / 2


def test_format_is_read_from_content_not_name(tmp_path):
    renamed = tmp_path / "model.h5"
    shutil.copy(ONNX_FIXTURES / "deepsea.onnx", renamed)
    model = ismkernel.load_model(renamed)
    assert model.format == "onnx"
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\xff\xff\xff not a protobuf at all")
    with pytest.raises(ModelFileError, match="not a readable ONNX file"):
        ismkernel.load_model(garbage)


def test_external_weights_are_read_and_missing_ones_reported(tmp_path):
    assert (ONNX_FIXTURES / "basset.onnx.data").exists()
    shutil.copy(ONNX_FIXTURES / "basset.onnx", tmp_path / "basset.onnx")
    with pytest.raises(ModelFileError, match="basset.onnx"):
        ismkernel.load_model(tmp_path / "basset.onnx")


def test_missing_onnx_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(
        BackendUnavailableError, match=r"pip install 'ismkernel\[onnx\]'"
    ):
        ismkernel.load_model(ONNX_FIXTURES / "deepsea.onnx")


@pytest.mark.parametrize(
    "name,match",
    [
        (
            "lstm",
            r"node '.*' \(LSTM\).*LSTM is a recurrent layer.*computes neither "
            r"attention nor recurrence and refuses the model",
        ),
        ("flip", r"\(Slice\).*Slice with step -1 is not supported"),
        ("reflect_pad", r"\(Pad\).*Pad mode 'reflect' is not supported"),
        (
            "attention",
            r"\(MatMul\).*multiplies two tensors computed from the model input "
            r"\(attention\)",
        ),
        ("conv2d", r"input 'x' .* has rank 4"),
        ("cumsum", r"\(CumSum\).*op type CumSum is not supported"),
    ],
)
def test_refused_pytorch_models(name, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        ismkernel.load_model(ONNX_FIXTURES / "refused" / f"{name}.onnx")


# -- hand-built graphs: options PyTorch's exporters do not write ----------------


def _save(tmp_path, nodes, inits=(), in_shape=(None, 4, 16), out_shape=None, opset=17):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="test"
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def _conv_weight(rng, n_out=3, n_in=4, k=4):
    return rng.normal(size=(n_out, n_in, k)).astype(np.float32)


def _conv_loop(x, w, left, right):
    """Direct PyTorch-layout convolution: (N, C, L) with weight (O, C, K)."""
    xp = np.pad(x, ((0, 0), (0, 0), (left, right)))
    k = w.shape[2]
    out_len = xp.shape[2] - k + 1
    return np.stack(
        [np.einsum("nck,ock->no", xp[:, :, i : i + k], w) for i in range(out_len)], -1
    )


@pytest.mark.parametrize(
    "auto_pad,left,right", [("SAME_UPPER", 1, 2), ("SAME_LOWER", 2, 1), ("VALID", 0, 0)]
)
def test_auto_pad(tmp_path, auto_pad, left, right):
    rng = np.random.default_rng(0)
    w = _conv_weight(rng)
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], kernel_shape=[4], auto_pad=auto_pad
    )
    model = ismkernel.load_model(_save(tmp_path, [node], [("w", w)]))
    x = rng.normal(size=(2, 4, 16)).astype(np.float32)
    (y,) = model.predict(x)
    np.testing.assert_allclose(y, _conv_loop(x, w, left, right), rtol=1e-5, atol=1e-5)


def test_channels_last_input_found_through_a_transpose(tmp_path):
    rng = np.random.default_rng(1)
    w = _conv_weight(rng)
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Conv", ["t", "w"], ["y"], kernel_shape=[4]),
    ]
    model = ismkernel.load_model(
        _save(tmp_path, nodes, [("w", w)], in_shape=(None, 16, 4))
    )
    assert model.inputs[0].shape == (16, 4)
    x = rng.normal(size=(2, 16, 4)).astype(np.float32)
    (y,) = model.predict(x)
    np.testing.assert_allclose(
        y, _conv_loop(x.transpose(0, 2, 1), w, 0, 0), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "node,inits,match",
    [
        (
            helper.make_node("Selu", ["x"], ["y"], alpha=2.0),
            [],
            r"node 'n' \(Selu\).*only the standard constants",
        ),
        (
            helper.make_node("Clip", ["x", "lo", "hi"], ["y"]),
            [("lo", np.float32(3)), ("hi", np.float32(-2))],
            r"\(Clip\).*the bounds are reversed",
        ),
        (
            helper.make_node("Pad", ["x", "p", "v"], ["y"]),
            [("p", np.array([0, 0, 1, 0, 0, 1])), ("v", np.float32(1.0))],
            r"\(Pad\).*only zeros",
        ),
        (
            helper.make_node("Pad", ["x", "p"], ["y"]),
            [("p", np.array([0, 1, 0, 0, 1, 0]))],
            r"\(Pad\).*only the length axis",
        ),
        (
            helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"]),
            [
                ("s", np.array([0])),
                ("e", np.array([10])),
                ("a", np.array([2])),
                ("st", np.array([2])),
            ],
            r"\(Slice\).*step 2",
        ),
        (
            helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0, 2]),
            [],
            r"\(Transpose\).*moves the batch axis",
        ),
        (
            helper.make_node("ReduceMean", ["x"], ["y"], keepdims=0),
            [],
            r"\(ReduceMean\).*over all axes",
        ),
        (
            helper.make_node("Softmax", ["x"], ["y"], axis=1),
            [],
            r"opset 11 Softmax over axis 1",
        ),
        (
            helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2], dilations=[2]),
            [],
            r"\(MaxPool\).*dilation",
        ),
        (
            helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear"),
            [("s", np.array([1.0, 1.0, 2.0], np.float32))],
            r"\(Resize\).*only nearest-neighbour upsampling",
        ),
        (
            helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest"),
            [("s", np.array([1.0, 2.0, 1.0], np.float32))],
            r"\(Resize\).*only an integer upsampling of the length axis",
        ),
        (
            helper.make_node("LayerNormalization", ["x", "g"], ["y"], axis=1),
            [("g", np.ones((4, 16), np.float32))],
            r"\(LayerNormalization\).*only normalisation over the channel axis",
        ),
        (
            helper.make_node("CumSum", ["x", "a"], ["y"]),
            [("a", np.array(2))],
            r"op type CumSum is not supported; supported: Abs, Add",
        ),
        (
            helper.make_node("Foo", ["x"], ["y"], domain="com.example"),
            [],
            r"operators of domain 'com.example' are not supported",
        ),
    ],
)
def test_unsupported_options_are_named(tmp_path, node, inits, match):
    node.name = "n"
    opset = 11 if node.op_type == "Softmax" else 17
    path = _save(tmp_path, [node], inits, opset=opset)
    with pytest.raises(UnsupportedLayerError, match=match):
        ismkernel.load_model(path)


def test_integer_input_is_refused(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(UnsupportedLayerError, match="input 'x'.*floating-point"):
        ismkernel.load_model(path)


def test_bad_reshape_is_a_shape_error(tmp_path):
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"])]
    path = _save(tmp_path, nodes, [("s", np.array([0, 5, 13]))])
    with pytest.raises(ShapeError, match="cannot reshape"):
        ismkernel.load_model(path)


def test_identity_dropout_pad_and_global_pools(tmp_path):
    """Operators PyTorch's exporters drop or rewrite, written by hand."""
    nodes = [
        helper.make_node("Identity", ["x"], ["i"]),
        helper.make_node("Dropout", ["i"], ["d"], name="drop"),
        helper.make_node("Pad", ["d", "p"], ["pd"]),
        helper.make_node("GlobalMaxPool", ["pd"], ["gmp"]),
        helper.make_node("GlobalAveragePool", ["pd"], ["gap"]),
        helper.make_node("Concat", ["gmp", "gap"], ["y"], axis=1),
    ]
    path = _save(tmp_path, nodes, [("p", np.array([0, 0, 2, 0, 0, 3]))])
    model = ismkernel.load_model(path)
    x = np.random.default_rng(3).normal(size=(3, 4, 16)).astype(np.float32)
    (y,) = model.predict(x)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 3)))
    expected = np.concatenate(
        [padded.max(axis=2, keepdims=True), padded.mean(axis=2, keepdims=True)], 1
    )
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)
    ref = ismkernel.ism(model, x, backend="reference", alternatives=ALTS)
    cpu = ismkernel.ism(model, x, backend="cpu", alternatives=ALTS)
    assert_same_ism(ref, cpu, "hand-built")


def test_dead_nodes_are_not_converted(tmp_path):
    """A node no output needs (here an op ismkernel does not know) is
    ignored, as PyTorch's unused second outputs are."""
    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("ArgMax", ["x"], ["unused"], axis=2),
    ]
    model = ismkernel.load_model(_save(tmp_path, nodes))
    x = np.random.default_rng(0).normal(size=(2, 4, 16)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x)[0], np.maximum(x, 0))


@pytest.mark.parametrize("lo,hi", [(-0.5, 0.7), (None, 2.0), (-1.5, None)])
def test_clip_to_any_range(tmp_path, lo, hi):
    inputs = ["x", "lo" if lo is not None else "", "hi" if hi is not None else ""]
    inits = [(n, np.float32(v)) for n, v in (("lo", lo), ("hi", hi)) if v is not None]
    path = _save(tmp_path, [helper.make_node("Clip", inputs, ["y"])], inits)
    x = np.random.default_rng(1).normal(size=(2, 4, 16)).astype(np.float32)
    (y,) = ismkernel.load_model(path).predict(x)
    np.testing.assert_array_equal(y, np.clip(x, lo, hi))


@pytest.mark.parametrize("op", ["ReduceLogSumExp", "ReduceMean", "ReduceMax"])
def test_reductions_over_features(tmp_path, op):
    """(batch, features) reductions, as ChromBPNet's logsumexp of its two
    count heads is."""
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node(op, ["f", "a"], ["y"], keepdims=1),
    ]
    path = _save(tmp_path, nodes, [("a", np.array([-1]))], in_shape=(None, 4, 3))
    x = np.random.default_rng(2).normal(size=(5, 4, 3)).astype(np.float32)
    (y,) = ismkernel.load_model(path).predict(x)
    f = x.reshape(5, -1).astype(np.float64)
    want = {
        "ReduceLogSumExp": np.log(np.exp(f).sum(1, keepdims=True)),
        "ReduceMean": f.mean(1, keepdims=True),
        "ReduceMax": f.max(1, keepdims=True),
    }[op]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


DYNAMIC = ONNX_FIXTURES / "dynamic"


def test_free_length_model_is_built_per_length():
    """bpnet-lite's BPNet exported with a dynamic length axis: its crops use
    X.shape[2], so a graph exists per length; it is built from the arrays."""
    model = ismkernel.load_model(DYNAMIC / "bpnet_dynamic_length.onnx")
    assert model.deferred_length
    assert model.inputs[0].shape == (4, None)
    data = dict(np.load(DYNAMIC / "bpnet_dynamic_length.npz"))
    for n in (64, 80):
        for k, y in enumerate(model.predict(data[f"x_{n}"])):
            assert_close_keras(y, data[f"y_{n}_{k}"], f"length {n} output {k}")
    assert model.with_length(80) is model.with_length(80)  # built once
    x = data["x_80"]
    ref = ismkernel.ism(model, x, backend="reference", alternatives=ALTS)
    cpu = ismkernel.ism(model, x, backend="cpu", alternatives=ALTS, batch_size=7)
    assert_same_ism(ref, cpu, "dynamic length")
    with pytest.raises(
        ismkernel.InputError, match="no graph until its sequence length"
    ):
        _ = model.graph


def test_free_length_model_on_the_command_line(tmp_path):
    import subprocess

    fasta = random_fasta(tmp_path / "in.fa", 2, 80)
    path = DYNAMIC / "bpnet_dynamic_length.onnx"
    out = tmp_path / "o.h5"
    run = [sys.executable, "-m", "ismkernel"]
    proc = subprocess.run(
        [*run, "ism", path, fasta, "-o", out, "-q"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([*run, "inspect", path], capture_output=True, text=True)
    assert "Pass --length L" in proc.stdout
    proc = subprocess.run(
        [*run, "inspect", path, "--length", "80"], capture_output=True, text=True
    )
    assert "ISM plan" in proc.stdout, proc.stderr


# -- one meaning, many spellings -------------------------------------------------

I64_MAX, I32_MAX = 2**63 - 1, 2**31 - 1


def _n(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def _graph_ops(model) -> list[str]:
    return [type(n.op).__name__ for n in model.graph.nodes.values()]


def _run_spelling(tmp_path, nodes, inits, opset=18):
    model = ismkernel.load_model(_save(tmp_path, nodes, inits, opset=opset))
    x = np.random.default_rng(7).normal(size=(3, 4, 16)).astype(np.float32)
    (y,) = model.predict(x)
    return model, x, y


CROPS = {
    "negative pads": ([_n("Pad", ["x", "p"])], [("p", np.array([0, 0, -3, 0, 0, -2]))]),
    "negative pads on given axes": (
        [_n("Pad", ["x", "p", "", "a"])],
        [("p", np.array([-3, -2])), ("a", np.array([-1]))],
    ),
    "negative pads in reflect mode": (
        [_n("Pad", ["x", "p"], mode="reflect")],
        [("p", np.array([0, 0, -3, 0, 0, -2]))],
    ),
    "negative end": (
        [_n("Slice", ["x", "s", "e", "a"])],
        [("s", np.array([3])), ("e", np.array([-2])), ("a", np.array([2]))],
    ),
    "negative start and axis": (
        [_n("Slice", ["x", "s", "e", "a"])],
        [("s", np.array([-13])), ("e", np.array([14])), ("a", np.array([-1]))],
    ),
    "clamped ends on every axis": (
        [_n("Slice", ["x", "s", "e"])],
        [("s", np.array([0, -99, 3])), ("e", np.array([I64_MAX, I32_MAX, -2]))],
    ),
    "gather of a run": (
        [_n("Gather", ["x", "i"], axis=2)],
        [("i", np.arange(3, 14))],
    ),
    "negative pads on a size-1 axis view": (
        [
            _n("Unsqueeze", ["x", "u"], ["x4"]),
            _n("Pad", ["x4", "p"], ["c4"]),
            _n("Squeeze", ["c4", "u"]),
        ],
        [("u", np.array([2])), ("p", np.array([0, 0, 0, -3, 0, 0, 0, -2]))],
    ),
}


@pytest.mark.parametrize("spelling", sorted(CROPS))
def test_every_spelling_of_a_crop_is_one_crop(tmp_path, spelling):
    nodes, inits = CROPS[spelling]
    model, x, y = _run_spelling(tmp_path, nodes, inits)
    np.testing.assert_array_equal(y, x[:, :, 3:14])
    assert _graph_ops(model) == ["Input", "Crop1D"]


def test_crop_and_pad_in_one_pad_and_a_channel_crop(tmp_path):
    nodes = [_n("Pad", ["x", "p"], ["a"]), _n("Pad", ["a", "q"])]
    inits = [("p", np.array([0, 0, -2, 0, 0, 3])), ("q", np.array([0, -1, 0, 0, 0, 0]))]
    model, x, y = _run_spelling(tmp_path, nodes, inits)
    np.testing.assert_array_equal(y, np.pad(x[:, 1:, 2:], ((0, 0), (0, 0), (0, 3))))
    assert _graph_ops(model) == ["Input", "Crop1D", "ZeroPad1D", "ChannelSlice"]
    ref = ismkernel.ism(model, x, backend="reference", alternatives=ALTS)
    cpu = ismkernel.ism(model, x, backend="cpu", alternatives=ALTS)
    assert_same_ism(ref, cpu, "crop and pad")


FLATTENS = {
    "Flatten": ([_n("Flatten", ["x"])], [], (64,)),
    "Reshape to (N, -1)": (
        [_n("Reshape", ["x", "s"])],
        [("s", np.array([0, -1]))],
        (64,),
    ),
    "Reshape to (N, 1, C*L)": (
        [_n("Reshape", ["x", "s"])],
        [("s", np.array([-1, 1, 64]))],
        (1, 64),
    ),
    "Reshape to (N, C*L, 1)": (
        [_n("Reshape", ["x", "s"])],
        [("s", np.array([0, 64, 1]))],
        (64, 1),
    ),
    "Flatten after a size-1 axis": (
        [_n("Unsqueeze", ["x", "u"], ["x4"]), _n("Flatten", ["x4"], axis=2)],
        [("u", np.array([1]))],
        (64,),
    ),
}


@pytest.mark.parametrize("spelling", sorted(FLATTENS))
def test_every_spelling_of_a_flatten_is_one_flatten(tmp_path, spelling):
    nodes, inits, shape = FLATTENS[spelling]
    model, x, y = _run_spelling(tmp_path, nodes, inits)
    np.testing.assert_array_equal(y, x.reshape((3,) + shape))
    assert _graph_ops(model) == ["Input", "Flatten"]
    assert model.graph.nodes[model.graph.outputs[0]].op.channels_first


def test_transpose_then_reshape_is_a_channels_last_flatten(tmp_path):
    nodes = [_n("Transpose", ["x"], ["t"], perm=[0, 2, 1]), _n("Reshape", ["t", "s"])]
    model, x, y = _run_spelling(tmp_path, nodes, [("s", np.array([0, 1, -1]))])
    np.testing.assert_array_equal(y, x.transpose(0, 2, 1).reshape(3, 1, 64))
    assert _graph_ops(model) == ["Input", "Flatten"]
    assert not model.graph.nodes[model.graph.outputs[0]].op.channels_first


DENSES = {
    "weights first": ([_n("MatMul", ["w", "x"])], "ocl"),
    "einsum": ([_n("Einsum", ["x", "w"], equation="bcl,oc->bol")], "ocl"),
    "einsum, weights first": (
        [_n("Einsum", ["w", "x"], equation="oc,bcl->bol")],
        "ocl",
    ),
    "einsum to channels last": (
        [_n("Einsum", ["x", "w"], equation="bcl,oc->blo")],
        "lo",
    ),
}


@pytest.mark.parametrize("spelling", sorted(DENSES))
def test_products_over_channels_are_dense_layers(tmp_path, spelling):
    nodes, layout = DENSES[spelling]
    w = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
    model, x, y = _run_spelling(tmp_path, nodes, [("w", w)])
    want = np.einsum("oc,ncl->nol", w, x)
    if layout == "lo":
        want = want.transpose(0, 2, 1)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    assert _graph_ops(model) == ["Input", "Dense"]


def test_gather_of_one_channel_drops_the_axis(tmp_path):
    nodes = [_n("Gather", ["x", "i"], axis=1)]
    model, x, y = _run_spelling(tmp_path, nodes, [("i", np.array(-3))])
    np.testing.assert_array_equal(y, x[:, 1])


MERGES = {
    "Max with zero": ([_n("Max", ["x", "z"])], [("z", np.float32(0))], ["relu"]),
    "Min with a bound": ([_n("Min", ["x", "b"])], [("b", np.float32(0.5))], ["clip"]),
    "Max with two bounds": (
        [_n("Max", ["x", "b", "z"])],
        [("b", np.float32(-1)), ("z", np.float32(0.3))],
        ["clip"],
    ),
    "Max of tensors": ([_n("Neg", ["x"], ["n"]), _n("Max", ["x", "n"])], [], None),
    "Sum of three": ([_n("Sum", ["x", "x", "x"])], [], None),
    "Mean of two": ([_n("Neg", ["x"], ["n"]), _n("Mean", ["x", "n", "x"])], [], None),
}


@pytest.mark.parametrize("spelling", sorted(MERGES))
def test_variadic_element_wise_ops(tmp_path, spelling):
    nodes, inits, fns = MERGES[spelling]
    model, x, y = _run_spelling(tmp_path, nodes, inits)
    want = {
        "Max with zero": np.maximum(x, 0),
        "Min with a bound": np.minimum(x, 0.5),
        "Max with two bounds": np.maximum(x, 0.3),
        "Max of tensors": np.abs(x),
        "Sum of three": x + x + x,
        "Mean of two": (x - x + x) / 3,
    }[spelling]
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)
    if fns:
        node = model.graph.nodes[model.graph.outputs[0]]
        assert [node.op.fn] == fns


@pytest.mark.parametrize(
    "nodes,inits,match",
    [
        (
            [_n("Gather", ["x", "i"], axis=2)],
            [("i", np.array([0, 2]))],
            r"\(Gather\).*only one row or a run of rows in order",
        ),
        (
            [_n("Flatten", ["x"], axis=2)],
            [],
            r"\(Flatten\).*merges the batch axis",
        ),
        (
            [_n("Pad", ["x", "p"])],
            [("p", np.array([0, 0, 10, 0, 0, -20]))],
            r"\(Pad\).*crop all 16 rows of axis 2 and part of the padding",
        ),
        (
            [_n("Pad", ["x", "p"], mode="edge")],
            [("p", np.array([0, 0, 1, 0, 0, -2]))],
            r"\(Pad\).*Pad mode 'edge' is not supported",
        ),
        (
            [_n("Einsum", ["x", "w"], equation="bcl,cl->b")],
            [("w", np.ones((4, 16), np.float32))],
            r"\(Einsum\).*'bcl,cl->b' is supported only as a tensor times a "
            r"constant matrix contracted over the channels",
        ),
        (
            [_n("Conv", ["x", "k"], ["h"]), _n("MatMul", ["h", "w"])],
            [
                ("k", np.ones((3, 4, 3), np.float32)),
                ("w", np.ones((14, 2), np.float32)),
            ],
            r"\(MatMul\).*multiplies along axis 2 of \(None, 3, 14\), which is not "
            r"the channel axis",
        ),
        (
            [_n("Max", ["x", "c"])],
            [("c", np.zeros((4, 1), np.float32))],
            r"\(Max\).*only a scalar bound in Max or Min",
        ),
        (
            [_n("Einsum", ["x", "x"], equation="bcl,bdl->bcd")],
            [],
            r"\(Einsum\).*it multiplies two tensors computed from the model input "
            r"\(attention\).*refuses the model",
        ),
        (
            [_n("RNN", ["x", "w", "r"], hidden_size=2)],
            [
                ("w", np.ones((1, 2, 4), np.float32)),
                ("r", np.ones((1, 2, 2), np.float32)),
            ],
            r"node 'n' \(RNN\).*RNN is a recurrent layer.*refuses the model",
        ),
    ],
)
def test_spellings_without_a_supported_meaning_are_named(tmp_path, nodes, inits, match):
    nodes[-1].name = "n"
    path = _save(tmp_path, nodes, inits, opset=18)
    with pytest.raises(UnsupportedLayerError, match=match):
        ismkernel.load_model(path)


@pytest.mark.parametrize(
    "nodes,inits,error,match",
    [
        (
            [_n("Slice", ["x", "s", "e", "a"])],
            [("s", np.array([10])), ("e", np.array([5])), ("a", np.array([2]))],
            UnsupportedLayerError,
            r"\(Slice\).*Slice \[10:5:1\] of an axis of 16 is empty",
        ),
        (
            [_n("Slice", ["x", "s", "e", "a", "t"])],
            [
                ("s", np.array([0])),
                ("e", np.array([5])),
                ("a", np.array([2])),
                ("t", np.array([0])),
            ],
            ModelFileError,
            r"\(Slice\).*has a step of 0",
        ),
        (
            [_n("Slice", ["x", "s", "e", "a"])],
            [("s", np.array([0])), ("e", np.array([5])), ("a", np.array([3]))],
            ModelFileError,
            r"\(Slice\).*axis 3 is out of range for a tensor of rank 3",
        ),
        (
            [_n("Gather", ["x", "i"], axis=2)],
            [("i", np.array([16]))],
            ModelFileError,
            r"\(Gather\).*indices \[16\] are out of range for an axis of 16",
        ),
        (
            [_n("Pad", ["x", "p", "", "a"])],
            [("p", np.array([1, 1])), ("a", np.array([1, 2]))],
            ModelFileError,
            r"\(Pad\).*2 pads for 2 axes; ONNX needs two per axis",
        ),
        (
            [_n("Pad", ["x", "p"])],
            [("p", np.array([-1, 0, 0, 0, 0, 0]))],
            UnsupportedLayerError,
            r"\(Pad\).*padding or cropping the batch axis is not supported",
        ),
        (
            [_n("MatMul", ["x", "w"])],
            [("w", np.ones((2, 16, 3), np.float32))],
            UnsupportedLayerError,
            r"\(MatMul\).*a second operand of shape \(2, 16, 3\): only 2-D weights",
        ),
        (
            [_n("MatMul", ["w", "x"])],
            [("w", np.ones((3, 5), np.float32))],
            ShapeError,
            r"\(MatMul\).*a weight of shape \(5, 3\) does not fit the tensor "
            r"\(None, 4, 16\)",
        ),
    ],
)
def test_malformed_or_unsupported_spellings(tmp_path, nodes, inits, error, match):
    path = _save(tmp_path, nodes, inits, opset=18)
    with pytest.raises(error, match=match):
        ismkernel.load_model(path)


def test_shape_arithmetic_is_evaluated_at_import(tmp_path):
    """A centre crop computed from the input's shape, as the TorchScript
    exporter writes ``x[:, :, L // 2 - 3 : L // 2 + k]``."""
    nodes = [
        _n("Shape", ["x"], ["s"]),
        _n("Gather", ["s", "two"], ["n"], axis=0),  # L = 16
        _n("Div", ["n", "two"], ["half"]),  # 8
        _n("Range", ["zero", "four", "one"], ["r"]),  # [0, 1, 2, 3]
        _n("Gather", ["r", "three"], ["k"], axis=0),  # 3
        _n("Neg", ["k"], ["nk"]),
        _n("Abs", ["nk"], ["ak"]),  # 3
        _n("Greater", ["n", "ten"], ["big"]),  # True
        _n("Where", ["big", "k", "ten"], ["w"]),  # 3
        _n("Expand", ["w", "shape1"], ["we"]),  # [3]
        _n("Tile", ["we", "one1"], ["wt"]),  # [3]
        _n("Sub", ["half", "ak"], ["lo"]),  # 5
        _n("Unsqueeze", ["lo", "zero1"], ["start"]),
        _n("Add", ["half", "wt"], ["end"]),  # [11]
        _n("Mod", ["end", "hundred"], ["end2"]),  # [11]
        _n("Max", ["end2", "one"], ["end3"]),  # [11]
        _n("Slice", ["x", "start", "end3", "axes"]),
    ]
    i64 = np.int64
    inits = [
        ("two", np.array(2, i64)),
        ("zero", np.array(0, i64)),
        ("four", np.array(4, i64)),
        ("one", np.array(1, i64)),
        ("three", np.array(3, i64)),
        ("ten", np.array(10, i64)),
        ("hundred", np.array(100, i64)),
        ("shape1", np.array([1], i64)),
        ("one1", np.array([1], i64)),
        ("zero1", np.array([0], i64)),
        ("axes", np.array([2], i64)),
    ]
    model, x, y = _run_spelling(tmp_path, nodes, inits)
    np.testing.assert_array_equal(y, x[:, :, 5:11])
    assert _graph_ops(model) == ["Input", "Crop1D"]


def test_gather_on_a_free_length_waits_for_the_length(tmp_path):
    nodes = [_n("Gather", ["x", "i"], axis=2)]
    path = _save(tmp_path, nodes, [("i", np.arange(2, 9))], in_shape=(None, 4, None))
    model = ismkernel.load_model(path)
    assert model.deferred_length
    x = np.random.default_rng(0).normal(size=(2, 4, 20)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x)[0], x[:, :, 2:9])


def test_tiles_are_concatenations(tmp_path):
    nodes = [_n("Tile", ["x", "r"])]
    model, x, y = _run_spelling(tmp_path, nodes, [("r", np.array([1, 2, 3]))])
    np.testing.assert_array_equal(y, np.tile(x, (1, 2, 3)))
    assert _graph_ops(model) == ["Input", "Concatenate", "Concatenate"]
    ref = ismkernel.ism(model, x, backend="reference", alternatives=ALTS)
    cpu = ismkernel.ism(model, x, backend="cpu", alternatives=ALTS)
    assert_same_ism(ref, cpu, "tiles")


@pytest.mark.parametrize("unsqueeze", [[2], [1]])
def test_a_vector_read_as_a_sequence(tmp_path, unsqueeze):
    """(N, C*L) with a size-1 axis after it is a sequence of length 1, before
    it a sequence of one channel: a convolution can read either."""
    w = np.random.default_rng(5).normal(size=(3, 64 if unsqueeze == [2] else 1, 1))
    nodes = [
        _n("Flatten", ["x"], ["f"]),
        _n("Unsqueeze", ["f", "u"], ["s"]),
        _n("Conv", ["s", "w"], kernel_shape=[1]),
    ]
    inits = [("u", np.array(unsqueeze)), ("w", w.astype(np.float32))]
    model, x, y = _run_spelling(tmp_path, nodes, inits)
    s = np.expand_dims(x.reshape(3, 64), unsqueeze[0])
    np.testing.assert_allclose(y, _conv_loop(s, w, 0, 0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "nodes,inits,error,match",
    [
        (
            [_n("Tile", ["x", "r"])],
            [("r", np.array([2, 1, 1]))],
            UnsupportedLayerError,
            r"\(Tile\).*repeating the batch axis is not supported",
        ),
        (
            [_n("Tile", ["x", "r"])],
            [("r", np.array([1, 2]))],
            ModelFileError,
            r"\(Tile\).*2 repeats for a tensor of rank 3",
        ),
        (
            [_n("Unsqueeze", ["x", "u"], ["x4"]), _n("Tile", ["x4", "r"])],
            [("u", np.array([2])), ("r", np.array([1, 1, 3, 1]))],
            UnsupportedLayerError,
            r"\(Tile\).*repeating axis 2 of \(None, 4, 1, 16\), which the IR lacks",
        ),
        (
            [_n("Expand", ["x", "s"])],
            [("s", np.array([2, 1, 4, 16]))],
            UnsupportedLayerError,
            r"\(Expand\).*adds axes before the batch",
        ),
        (
            [_n("Expand", ["x", "s"])],
            [("s", np.array([1, 3, 16]))],
            ShapeError,
            r"\(Expand\).*cannot expand \(None, 4, 16\) to \[1, 3, 16\]",
        ),
    ],
)
def test_repeats_that_are_not_concatenations(tmp_path, nodes, inits, error, match):
    path = _save(tmp_path, nodes, inits, opset=18)
    with pytest.raises(error, match=match):
        ismkernel.load_model(path)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
def test_reductions_over_a_vector_with_size_1_axes(tmp_path, op):
    """(N, 1, F) reduced over F, as a LayerNorm of gReLU's MLP head is
    written out before opset 17: mean, then the centred vector."""
    nodes = [
        _n("Reshape", ["x", "s"], ["v"]),
        _n(op, ["v", "a"], ["m"], keepdims=1),
        _n("Sub", ["v", "m"], ["y"]),
    ]
    inits = [("s", np.array([0, 1, -1])), ("a", np.array([-1]))]
    model, x, y = _run_spelling(tmp_path, nodes, inits)
    v = x.reshape(3, 1, 64)
    fn = np.mean if op == "ReduceMean" else np.max
    np.testing.assert_allclose(y, v - fn(v, axis=-1, keepdims=True), atol=1e-6)


def test_windows_split_off_the_length_are_named(tmp_path):
    """gReLU's attention pooling reshapes (N, C, L) to (N, C, L/p, p)."""
    nodes = [_n("Conv", ["x", "w"], ["h"]), _n("Reshape", ["h", "s"])]
    inits = [("w", np.ones((3, 4, 1), np.float32)), ("s", np.array([0, 3, 8, 2]))]
    path = _save(tmp_path, nodes, inits)
    with pytest.raises(
        UnsupportedLayerError,
        match=r"\(Reshape\).*reshaping \(None, 3, 16\) to \(None, 3, 8, 2\) splits "
        r"the length axis into windows of 2 \(as attention pooling does\)",
    ):
        ismkernel.load_model(path)


@pytest.mark.parametrize(
    "nodes,inits,match",
    [
        (
            [_n("Conv", ["x", "w"], ["h"]), _n("Reshape", ["h", "s"])],
            [("w", np.ones((3, 4, 1), np.float32)), ("s", np.array([0, 16, 3]))],
            r"\(Reshape\).*reshaping \(None, 3, 16\) to \(None, 16, 3\) moves values "
            r"of a channels-first tensor; only flattening is supported there",
        ),
        (
            [_n("Floor", ["x"])],
            [],
            r"\(Floor\).*Floor is supported only on constants, not on tensors "
            r"computed from the model input",
        ),
    ],
)
def test_other_refusals_are_named(tmp_path, nodes, inits, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        ismkernel.load_model(_save(tmp_path, nodes, inits))


UPSAMPLES = {
    "Expand": (
        [
            _n("Unsqueeze", ["x", "u"], ["x4"]),
            _n("Expand", ["x4", "e"], ["r"]),
            _n("Reshape", ["r", "s"]),
        ],
        [
            ("u", np.array([3])),
            ("e", np.array([1, 1, 1, 3])),
            ("s", np.array([-1, 4, 48])),
        ],
    ),
    "Tile, the shape read back": (
        [
            _n("Unsqueeze", ["x", "u"], ["x4"]),
            _n("Tile", ["x4", "t"], ["r"]),
            _n("Shape", ["r"], ["sh"]),
            _n("Slice", ["sh", "z", "two", "z"], ["nc"]),
            _n("Concat", ["nc", "m1"], ["s"], axis=0),
            _n("Reshape", ["r", "s"]),
        ],
        [
            ("u", np.array([3])),
            ("t", np.array([1, 1, 1, 3])),
            ("z", np.array([0])),
            ("two", np.array([2])),
            ("m1", np.array([-1])),
        ],
    ),
}


@pytest.mark.parametrize("spelling", sorted(UPSAMPLES))
def test_repeats_merged_into_the_length_are_an_upsampling(tmp_path, spelling):
    """``repeat_interleave`` along the length (and Keras 3's UpSampling1D):
    a new axis after the length, repeated, merged back into the length."""
    nodes, inits = UPSAMPLES[spelling]
    model, x, y = _run_spelling(tmp_path, nodes, inits)
    np.testing.assert_array_equal(y, np.repeat(x, 3, axis=2))
    assert _graph_ops(model) == ["Input", "UpSample1D"]


@pytest.mark.parametrize(
    "nodes,inits,match",
    [
        (
            [
                _n("Unsqueeze", ["x", "u"], ["x4"]),
                _n("Expand", ["x4", "e"], ["r"]),
                _n("Relu", ["r"]),
            ],
            [("u", np.array([3])), ("e", np.array([1, 1, 1, 3]))],
            r"\(Relu\).*repeats a tensor along a new axis; only merging the repeats "
            r"into the length \(an upsampling\) is supported",
        ),
        (
            [
                _n("Unsqueeze", ["x", "u"], ["x4"]),
                _n("Expand", ["x4", "e"], ["r"]),
                _n("Reshape", ["r", "s"]),
            ],
            [
                ("u", np.array([3])),
                ("e", np.array([1, 1, 1, 3])),
                ("s", np.array([0, 12, 16])),
            ],
            r"\(Reshape\).*reshaping \(None, 4, 16, 3\) \(the repeats of a tensor\) "
            r"to \(None, 12, 16\): only merging the repeats into the length",
        ),
    ],
)
def test_repeats_read_otherwise_are_named(tmp_path, nodes, inits, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        ismkernel.load_model(_save(tmp_path, nodes, inits))


def test_global_pools_of_a_channels_last_tensor_reduce_the_channels(tmp_path):
    """GlobalAveragePool reduces every axis after the second: over the
    channels of (N, L, C), as tf2onnx writes a LayerNorm's mean."""
    nodes = [
        _n("Conv", ["x", "w"], ["h"]),
        _n("Transpose", ["h"], ["t"], perm=[0, 2, 1]),
        _n("GlobalAveragePool", ["t"], ["m"]),
        _n("GlobalMaxPool", ["t"], ["g"]),
        _n("Sub", ["m", "g"]),
    ]
    w = np.random.default_rng(6).normal(size=(3, 4, 1)).astype(np.float32)
    model, x, y = _run_spelling(tmp_path, nodes, [("w", w)])
    t = np.einsum("ock,ncl->nlo", w, x)
    want = t.mean(-1, keepdims=True) - t.max(-1, keepdims=True)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_constants_that_broadcast_a_tensor_repeat_it(tmp_path):
    """(N, 1, L) times a per-channel constant (C, 1): the tensor's size-1
    channel axis is repeated, then scaled per channel."""
    nodes = [
        _n("Conv", ["x", "w"], ["h"]),
        _n("Mul", ["h", "c"], ["p"]),
        _n("Erfc", ["p"]),
    ]
    w = np.random.default_rng(8).normal(size=(1, 4, 1)).astype(np.float32)
    c = np.array([[0.5], [-1.0], [2.0]], np.float32)
    model, x, y = _run_spelling(tmp_path, nodes, [("w", w), ("c", c)])
    from scipy.special import erfc

    want = erfc(np.einsum("ock,ncl->nol", w, x) * c)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin"])
def test_reductions_of_constants_are_evaluated(tmp_path, op):
    """A flatten to ``prod(shape[1:])`` as tf2onnx computes it; the other
    reductions of the same constant ([4, 16] -> 20, 16, 4) are not a
    flatten and must fail as a reshape of the wrong size."""
    nodes = [
        _n("Shape", ["x"], ["s"]),
        _n("Gather", ["s", "i"], ["dims"], axis=0),
        _n(op, ["dims"], ["n"], axes=[0], keepdims=1),
        _n("Concat", ["m1", "n"], ["t"], axis=0),
        _n("Reshape", ["x", "t"]),
    ]
    inits = [("i", np.array([1, 2])), ("m1", np.array([-1]))]
    if op != "ReduceProd":
        with pytest.raises(ShapeError, match="cannot reshape"):
            ismkernel.load_model(_save(tmp_path, nodes, inits, opset=17))
        return
    model, x, y = _run_spelling(tmp_path, nodes, inits, opset=17)
    np.testing.assert_array_equal(y, x.reshape(3, 64))
