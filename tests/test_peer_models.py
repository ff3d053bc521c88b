"""The peers' own model classes (bpnet-lite, gReLU), exported to ONNX by both
of PyTorch's exporters, against PyTorch's own outputs; and Keras models with
custom layers, refused as Keras files and read through the ONNX exports the
refusal recommends, against Keras's own outputs.

Built by ``fixtures/make_peer_fixtures.py``. Predictions must match PyTorch to
rtol 1e-5 with atol 4e-6 of the output's largest magnitude (float32 rounding
through up to twenty layers: about 30 ulps of the output scale); ISM, against
PyTorch on explicitly mutated sequences, to 1e-4 of the output scale, and the
cpu backend must equal the reference backend on the same mutants.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ONNX_FIXTURES, assert_same_ism, fixture_inputs

import ismkernel
from ismkernel.cli import main as cli_main
from ismkernel.errors import UnsupportedLayerError

pytest.importorskip("onnx")

PEERS = ONNX_FIXTURES / "peers"
MANIFEST = json.loads((PEERS / "manifest.json").read_text())
FILES = sorted(MANIFEST)


def _data(name: str) -> dict[str, np.ndarray]:
    with np.load(PEERS / MANIFEST[name]["npz"]) as d:
        return {k: d[k] for k in d.files}


def _x(xs):
    return xs if len(xs) > 1 else xs[0]


def _assert_close(comp, ref, what):
    assert comp.shape == ref.shape, f"{what}: shape {comp.shape} != {ref.shape}"
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(comp, ref, rtol=1e-5, atol=4e-6 * scale, err_msg=what)


def _assert_ism_close(comp, ref, what):
    assert comp.shape == ref.shape, f"{what}: shape {comp.shape} != {ref.shape}"
    scale = float(np.abs(ref).max())
    err = float(np.abs(comp - ref).max())
    assert err <= 1e-4 * scale, f"{what}: max error {err:.3g} at scale {scale:.3g}"


def test_every_class_is_there_with_both_exporters():
    classes = {v["class"].rsplit(".", 1)[1] for v in MANIFEST.values()}
    assert {
        "BPNet",
        "ChromBPNet",
        "ConvModel",
        "DilatedConvModel",
        "ConvMLPModel",
    } <= classes
    for model in {v["model"] for v in MANIFEST.values() if "torch" in v["framework"]}:
        exporters = {v["exporter"] for v in MANIFEST.values() if v["model"] == model}
        assert exporters == {"dynamo", "torchscript"}, model
    exporters = {v["exporter"].split()[0] for v in MANIFEST.values()}
    assert {"tf2onnx", "keras"} <= exporters
    assert MANIFEST["bpnet.onnx"]["length"] == 2114


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("kind", ["onehot", "float"])
def test_predict_matches_pytorch(name, kind):
    model = ismkernel.load_model(PEERS / name)
    data = _data(name)
    comp = model.predict(_x(fixture_inputs(data, kind)))
    assert len(comp) == MANIFEST[name]["n_outputs"]
    for k, y in enumerate(comp):
        assert y.dtype == np.float32
        _assert_close(y, data[f"y_{kind}_{k}"], f"{name} output {k}")


@pytest.mark.parametrize("name", FILES)
def test_ism_matches_pytorch_mutants_on_both_backends(name):
    model = ismkernel.load_model(PEERS / name)
    data = _data(name)
    x = _x([x[:1] for x in fixture_inputs(data, "onehot")])
    runs = {
        backend: ismkernel.ism(
            model,
            x,
            positions=data["positions"],
            alternatives=data["alternatives"],
            backend=backend,
        )
        for backend in ("reference", "cpu")
    }
    for backend, result in runs.items():
        for k, out in enumerate(result.outputs):
            _assert_ism_close(out[0], data[f"ism_{k}"], f"{name} {backend} {k}")
    assert_same_ism(runs["reference"], runs["cpu"], name)


def _op_names(model) -> list[str]:
    return [type(node.op).__name__ for node in model.graph.nodes.values()]


CROPPED = [
    f for f in FILES if MANIFEST[f]["model"] in ("grelu_dilated", "grelu_conv_options")
]


@pytest.mark.parametrize("name", CROPPED)
def test_grelu_crops_are_crops(name):
    """gReLU crops with ConstantPad1d(-n): a Pad with negative pads, which
    the exporters write with constant pads, pads computed from shapes, or
    (opset 11) pads as attributes; it is one crop, not a padding."""
    ops = _op_names(ismkernel.load_model(PEERS / name))
    assert ops.count("Crop1D") == 1, ops
    assert "ZeroPad1D" not in ops


@pytest.mark.parametrize("exporter", ["", ".ts"])
def test_grelu_mlp_head_flattens_channels_first(exporter):
    """gReLU's MLP head reshapes (N, C, L) to (N, 1, C*L): a channels-first
    flatten with a size-1 axis in front."""
    model = ismkernel.load_model(PEERS / f"grelu_conv_mlp{exporter}.onnx")
    flats = [
        n.op
        for n in model.graph.nodes.values()
        if type(n.op).__name__ in ("Flatten", "Reshape")
    ]
    assert [type(op).__name__ for op in flats] == ["Flatten"]
    assert flats[0].channels_first


REFUSED = {
    "grelu_transformer": (
        "Einsum",
        r"it multiplies two tensors computed from the model input \(attention\)",
    ),
    "grelu_gru": ("GRU", r"GRU is a recurrent layer"),
}


@pytest.mark.parametrize("exporter", ["", ".ts"])
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_attention_and_recurrence_are_refused_by_name(name, exporter, capsys):
    op, what = REFUSED[name]
    path = PEERS / "refused" / f"{name}{exporter}.onnx"
    match = (
        rf"node '[^']+' \({op}\) in '.*{name}{exporter}\.onnx': {what}.*ismkernel "
        r"computes neither attention nor recurrence and refuses the model.*"
        r"compute its ISM in its own framework"
    )
    with pytest.raises(UnsupportedLayerError, match=match):
        ismkernel.load_model(path)
    assert cli_main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "UnsupportedLayerError" in err and f"({op})" in err
    assert "refuses the model" in err


def test_custom_keras_layers_are_read_through_the_recommended_export():
    """The Keras 2 file with MMSplice-style custom layers is refused by the
    custom layer's name; the file ``tf2onnx.convert.from_keras`` made of it,
    as the refusal recommends, is read (its outputs are checked above)."""
    with pytest.raises(
        UnsupportedLayerError,
        match=r"layer 'scale' \(ScaleByTwo\) is not a supported layer: it is a "
        r"custom layer.*tf2onnx\.convert\.from_keras",
    ):
        ismkernel.load_model(PEERS / "keras2_custom_layers.h5")
    model = ismkernel.load_model(PEERS / "keras2_custom_layers.onnx")
    assert model.input_perms[0] == (0, 1)  # Keras's (N, L, 4)
    assert "Conv1D" in _op_names(model)
