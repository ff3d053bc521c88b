"""Malformed or unsupported configs in otherwise real Keras files.

Each case edits the JSON config of a copy of a Keras-built fixture and checks
the error class and message: the layer is always named.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from conftest import edit_h5_config, fixture_path, rewrite_keras

import ismkernel
from ismkernel import ModelFileError, ShapeError, UnsupportedLayerError


def _layer(cfg, name):
    return next(x for x in cfg["config"]["layers"] if x["name"] == name)


def _set(name, **values):
    return lambda cfg: _layer(cfg, name)["config"].update(values)


def _inbound(name, nodes):
    return lambda cfg: _layer(cfg, name).update(inbound_nodes=nodes)


def _root(**values):
    return lambda cfg: cfg["config"].update(values)


def _drop_name(cfg):
    layer = _layer(cfg, "flatten")
    del layer["name"]
    del layer["config"]["name"]


def _extra_input(cfg):
    extra = json.loads(json.dumps(_layer(cfg, "dna")))
    extra["name"] = extra["config"]["name"] = "extra"
    cfg["config"]["layers"].append(extra)
    _layer(cfg, "conv")["inbound_nodes"] = [[["extra", 0, 0, {}]]]


CASES = [
    # (fixture, edit, error, message)
    (
        "conv_basic",
        _set("conv", kernel_size=[3, 3]),
        UnsupportedLayerError,
        r"layer 'conv' \(Conv1D\): 'kernel_size' = \[3, 3\]; a 1-D layer needs one value",
    ),
    (
        "conv_basic",
        _set("conv", filters=0),
        UnsupportedLayerError,
        r"'filters' = 0; expected an integer >= 1",
    ),
    (
        "conv_basic",
        _set("conv", filters="8"),
        UnsupportedLayerError,
        r"'filters' = '8'; expected an integer >= 1",
    ),
    (
        "conv_basic",
        _set("conv", groups=3),
        ShapeError,
        r"layer 'conv' \(Conv1D\): 4 input channels and 8 filters do not split into 3 groups",
    ),
    (
        "conv_basic",
        _set("conv", dilation_rate=[10]),
        ShapeError,
        r"layer 'conv' \(Conv1D\): input length 24 is shorter than the kernel span 41",
    ),
    (
        "conv_basic",
        _set("max_pooling1d", pool_size=[100]),
        ShapeError,
        r"layer 'max_pooling1d' \(MaxPooling1D\): input length 20 is shorter than pool size 100",
    ),
    (
        "conv_basic",
        _set("conv", activation="hard_silu"),
        UnsupportedLayerError,
        r"activation 'hard_silu' needs Keras 3",
    ),
    (
        "conv_basic",
        _set("conv", activation={"class_name": "MyAct", "config": {}}),
        UnsupportedLayerError,
        r"layer 'conv' \(Conv1D\) uses activation 'MyAct'",
    ),
    (
        "conv_basic",
        _set("dna", sparse=True),
        UnsupportedLayerError,
        r"sparse or ragged inputs are not supported",
    ),
    (
        "conv_basic",
        lambda cfg: cfg.update(class_name="Bogus"),
        ModelFileError,
        r"the model config is not a Functional or Sequential model \(class 'Bogus'\)",
    ),
    (
        "conv_basic",
        _root(input_layers=5),
        ModelFileError,
        r"cannot read model inputs/outputs 5",
    ),
    (
        "conv_basic",
        _root(input_layers=[["ghost", 0, 0]]),
        ModelFileError,
        r"has no input layer 'ghost'",
    ),
    (
        "conv_basic",
        _root(output_layers=[["out", 3, 0]]),
        ModelFileError,
        r"refers to call 3 of layer 'out', which the config does not have",
    ),
    (
        "conv_basic",
        _root(output_layers=[["out", 0, 4]]),
        ModelFileError,
        r"refers to output 4 of layer 'out', which has 1",
    ),
    ("conv_basic", _root(layers={"a": 1}), ModelFileError, r"config has no layer list"),
    (
        "conv_basic",
        _drop_name,
        ModelFileError,
        r"a layer in the model config has no name",
    ),
    (
        "conv_basic",
        _inbound("conv", [5]),
        ModelFileError,
        r"layer 'conv': cannot read inbound node 5",
    ),
    (
        "conv_basic",
        _inbound("conv", [[["dna", "x", 0, {}]]]),
        ModelFileError,
        r"layer 'conv': cannot read tensor reference",
    ),
    (
        "conv_basic",
        _inbound("conv", [[["out", 0, 0, {}]]]),
        ModelFileError,
        r"model 'model' has a cycle at",
    ),
    (
        "conv_basic",
        _extra_input,
        ModelFileError,
        r"uses input layer 'extra', which is not one of its inputs",
    ),
    (
        "conv_basic",
        _inbound("out", [[["flatten", 0, 0, {}], ["flatten", 0, 0, {}]]]),
        ShapeError,
        r"layer 'out' \(Dense\) takes 1 input, got 2",
    ),
    (
        "merges",
        _inbound("add", [[["a", 0, 0, {}]]]),
        ShapeError,
        r"layer 'add' \(Add\) takes 2 or more inputs, got 1",
    ),
    (
        "merges",
        _inbound("subtract", [[["a", 0, 0, {}], ["b", 0, 0, {}], ["c", 0, 0, {}]]]),
        ShapeError,
        r"layer 'subtract' \(Subtract\) needs exactly 2 inputs, got 3",
    ),
    (
        "concatenates",
        _set("concat_length", axis=-1),
        ShapeError,
        r"layer 'concat_length' \(Concatenate\): cannot concatenate shapes \[\(24, 5\), \(21, 5\)\] on axis 1",
    ),
    (
        "crop_pad_upsample",
        _set("cropping1d", cropping=[2, -1]),
        UnsupportedLayerError,
        r"layer 'cropping1d' \(Cropping1D\): 'cropping' = \[2, -1\]; expected an integer or a pair",
    ),
    (
        "crop_pad_upsample",
        _set("cropping1d", cropping=[11, 11]),
        ShapeError,
        r"cropping \(11, 11\) leaves nothing of length 22",
    ),
    (
        "reshapes",
        _set("pairs", target_shape=[-1, -1]),
        UnsupportedLayerError,
        r"layer 'pairs' \(Reshape\): target_shape has more than one -1",
    ),
    (
        "reshapes",
        _set("pairs", target_shape=[0, 12]),
        UnsupportedLayerError,
        r"target_shape=\[0, 12\] is not a tuple of positive integers",
    ),
    (
        "reshapes",
        _set("pairs", target_shape=[7, -1]),
        ShapeError,
        r"layer 'pairs' \(Reshape\): cannot reshape \(24, 6\) to \(7, -1\)",
    ),
    (
        "reshapes",
        _set("pairs", target_shape=[5, 5]),
        ShapeError,
        r"layer 'pairs' \(Reshape\): cannot reshape \(24, 6\) \(144 values\) to \(5, 5\)",
    ),
    (
        "activation_layers",
        _set("softmax_length", axis=[1, 2]),
        UnsupportedLayerError,
        r"layer 'softmax_length' \(Softmax\): axis=\[1, 2\]; only a single axis is supported",
    ),
    (
        "activation_layers",
        _set("softmax_length", axis="x"),
        UnsupportedLayerError,
        r"axis='x' is not an integer",
    ),
    (
        "activation_layers",
        _set("softmax_length", axis=5),
        UnsupportedLayerError,
        r"axis=5 is out of range for inputs of rank 3",
    ),
    (
        "activation_layers",
        _set("softmax_length", axis=0),
        UnsupportedLayerError,
        r"or is the batch axis",
    ),
    (
        "activation_layers",
        _set("relu_all", max_value="big"),
        UnsupportedLayerError,
        r"layer 'relu_all' \(ReLU\): 'max_value' = 'big' is not a number",
    ),
    (
        "layernorm",
        _set("ln", axis=[1]),
        UnsupportedLayerError,
        r"layer 'ln' \(LayerNormalization\): only normalisation over the last \(channel\) axis",
    ),
    (
        "layernorm",
        _set("ln", rms_scaling=True),
        UnsupportedLayerError,
        r"layer 'ln' \(LayerNormalization\): rms_scaling=True is not supported",
    ),
]


@pytest.mark.parametrize(
    "fixture,edit,error,message",
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_bad_config(tmp_path, fixture, edit, error, message):
    dst = tmp_path / "model.h5"
    shutil.copy(fixture_path(f"{fixture}.k2.h5"), dst)
    edit_h5_config(dst, edit)
    with pytest.raises(error, match=message):
        ismkernel.load_model(dst)


def test_keras3_tensor_keyword_argument(tmp_path):
    def edit(cfg):
        conv = _layer(cfg, "conv")
        tensor = conv["inbound_nodes"][0]["args"][0]
        conv["inbound_nodes"][0]["kwargs"] = {"mask": tensor}

    with pytest.raises(
        UnsupportedLayerError,
        match=r"layer 'conv' is called with a tensor keyword argument",
    ):
        ismkernel.load_model(
            rewrite_keras("conv_basic.k3.keras", tmp_path, edit_config=edit)
        )


def test_keras3_archive_problems(tmp_path):
    name = "conv_basic.k3.keras"
    with pytest.raises(ModelFileError, match="has no model.weights.h5"):
        ismkernel.load_model(rewrite_keras(name, tmp_path, drop=("model.weights.h5",)))
    with pytest.raises(ModelFileError, match="config.json is not valid JSON"):
        ismkernel.load_model(
            rewrite_keras(name, tmp_path, replace={"config.json": b"{"})
        )
    with pytest.raises(ModelFileError, match="cannot read the weights in"):
        ismkernel.load_model(
            rewrite_keras(name, tmp_path, replace={"model.weights.h5": b"not hdf5"})
        )

    def drop_group(f):
        del f["layers/dense"]

    with pytest.raises(
        ModelFileError,
        match=r"layer 'out' \(Dense\): .* has no weights group 'layers/dense'",
    ):
        ismkernel.load_model(rewrite_keras(name, tmp_path, edit_weights=drop_group))


def test_legacy_h5_weight_problems(tmp_path):
    dst = tmp_path / "model.h5"
    shutil.copy(fixture_path("conv_basic.k2.h5"), dst)
    with h5py.File(dst, "r+") as f:
        del f["model_weights/out/out/kernel:0"]
        f["model_weights/out/out/kernel:0"] = np.zeros((80, 3), np.int64)
    with pytest.raises(
        ModelFileError,
        match=r"layer 'out' \(Dense\).*'kernel' has dtype int64, expected a float type",
    ):
        ismkernel.load_model(dst)
    with h5py.File(dst, "r+") as f:
        del f["model_weights/out"]
    with pytest.raises(
        ModelFileError, match=r"has no weights group 'model_weights/out'"
    ):
        ismkernel.load_model(dst)
    with h5py.File(dst, "r+") as f:
        del f["model_weights"]
    with pytest.raises(
        ModelFileError, match="has a model config but no 'model_weights' group"
    ):
        ismkernel.load_model(dst)
