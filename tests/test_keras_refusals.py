"""Custom Keras layers are refused by name, with the way out: export the model
to ONNX, where its code runs once, and read that file."""

from __future__ import annotations

import shutil

import pytest
from conftest import edit_h5_config, fixture_path, rewrite_keras

import ismkernel
from ismkernel.errors import UnsupportedLayerError

H5 = "bpnet_mini.k2.h5"
KERAS = "bpnet_mini.k3.keras"

# MMSplice's custom layers, each put in place of a layer Keras ships.
MMSPLICE = {
    "ConvDNA": "iconv",
    "GlobalAveragePooling1D_Mask0": "global_average_pooling1d_1",
    "SplineWeight1D": "counts",
}

CUSTOM = (
    r"is not a supported layer: it is a custom layer, and custom layers carry "
    r"Python code, which ismkernel will not run\. Export the model to ONNX .*"
    r"Keras 3, model\.export\('model\.onnx', format='onnx'\); Keras 2, pip install "
    r"tf2onnx, then tf2onnx\.convert\.from_keras\(.*\); PyTorch, "
    r"torch\.onnx\.export\(.*\)\. Keras layers supported: Activation"
)


def _rename(layers, layer, cls, module=None):
    entry = next(x for x in layers if (x.get("name") or x["config"]["name"]) == layer)
    entry["class_name"] = cls
    if "module" in entry:
        entry["module"] = module
        entry["registered_name"] = cls if module is None else None


@pytest.mark.parametrize("cls", sorted(MMSPLICE))
def test_mmsplice_layers_in_keras2_files(tmp_path, cls):
    path = tmp_path / "model.h5"
    shutil.copy(fixture_path(H5), path)
    edit_h5_config(path, lambda c: _rename(c["config"]["layers"], MMSPLICE[cls], cls))
    match = rf"layer '{MMSPLICE[cls]}' \({cls}\) {CUSTOM}"
    with pytest.raises(UnsupportedLayerError, match=match):
        ismkernel.load_model(path)


@pytest.mark.parametrize("cls", sorted(MMSPLICE))
def test_mmsplice_layers_in_keras3_files(tmp_path, cls):
    path = rewrite_keras(
        KERAS,
        tmp_path,
        edit_config=lambda c: _rename(c["config"]["layers"], MMSPLICE[cls], cls),
    )
    with pytest.raises(UnsupportedLayerError, match=rf"\({cls}\) {CUSTOM}"):
        ismkernel.load_model(path)


@pytest.mark.parametrize(
    "cls,module",
    [
        ("LSTM", None),  # Keras 2: known by its name
        ("SimpleRNN", "keras.layers"),
        ("Conv2D", "keras.layers"),
    ],
)
def test_keras_own_unsupported_layers_are_not_called_custom(tmp_path, cls, module):
    path = rewrite_keras(
        KERAS,
        tmp_path,
        edit_config=lambda c: _rename(c["config"]["layers"], "rconv1", cls, module),
    )
    if module is None:  # as a Keras 2 file would have it
        path = tmp_path / "model.h5"
        shutil.copy(fixture_path(H5), path)
        edit_h5_config(path, lambda c: _rename(c["config"]["layers"], "rconv1", cls))
    with pytest.raises(UnsupportedLayerError) as info:
        ismkernel.load_model(path)
    message = str(info.value)
    assert f"layer 'rconv1' ({cls}) is not a supported layer: ismkernel does not " in (
        message
    )
    assert "Keras layer class; supported: Activation" in message
    assert "custom" not in message


def test_a_keras3_layer_from_another_module_is_custom(tmp_path):
    path = rewrite_keras(
        KERAS,
        tmp_path,
        edit_config=lambda c: _rename(
            c["config"]["layers"], "rconv1", "Conv1D", "mmsplice.layers"
        ),
    )
    with pytest.raises(UnsupportedLayerError, match=rf"\(Conv1D\) {CUSTOM}"):
        ismkernel.load_model(path)
