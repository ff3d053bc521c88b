"""Bad files and bad arguments: each gets a clear error of a documented class."""

from __future__ import annotations

import shutil
import zipfile

import h5py
import numpy as np
import pytest
from conftest import REFUSED, edit_h5_config, fixture_path, rewrite_keras

import ismkernel
from ismkernel import (
    BackendUnavailableError,
    InputError,
    ModelFileError,
    ShapeError,
    UnsupportedLayerError,
)

H5 = "conv_basic.k2.h5"
KERAS = "conv_basic.k3.keras"


@pytest.fixture
def h5_copy(tmp_path):
    dst = tmp_path / "model.h5"
    shutil.copy(fixture_path(H5), dst)
    return dst


def _layer(cfg, class_name):
    return next(x for x in cfg["config"]["layers"] if x["class_name"] == class_name)


# -- files ---------------------------------------------------------------------


@pytest.mark.parametrize("name", [H5, KERAS])
def test_truncated_file(tmp_path, name):
    blob = fixture_path(name).read_bytes()
    dst = tmp_path / name
    dst.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        ismkernel.load_model(dst)


def test_corrupt_hdf5(tmp_path):
    dst = tmp_path / "corrupt.h5"
    dst.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 20)
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        ismkernel.load_model(dst)


def test_not_a_model_file(tmp_path):
    dst = tmp_path / "model.h5"
    dst.write_text("ACGTACGT\n")
    with pytest.raises(
        ModelFileError, match="neither an HDF5 file, a .keras archive nor an ONNX file"
    ):
        ismkernel.load_model(dst)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        ismkernel.load_model(tmp_path / "nope.h5")
    with pytest.raises(ModelFileError, match="is a directory"):
        ismkernel.load_model(tmp_path)


def test_weights_without_model_config_keras2(tmp_path):
    """What Keras 2's save_weights("w.h5") writes: layer groups, no config."""
    dst = tmp_path / "weights.h5"
    with h5py.File(fixture_path(H5), "r") as src, h5py.File(dst, "w") as f:
        for key, value in src["model_weights"].attrs.items():
            f.attrs[key] = value
        for key in src["model_weights"]:
            src.copy(src["model_weights"][key], f, name=key)
    with pytest.raises(ModelFileError, match="holds weights but no model config"):
        ismkernel.load_model(dst)


def test_weights_without_model_config_keras3(tmp_path):
    """A Keras 3 ``.weights.h5``: the archive's weights file on its own."""
    dst = tmp_path / "model.weights.h5"
    dst.write_bytes(zipfile.ZipFile(fixture_path(KERAS)).read("model.weights.h5"))
    with pytest.raises(ModelFileError, match="no model config"):
        ismkernel.load_model(dst)


def test_hdf5_that_is_not_a_model(tmp_path):
    dst = tmp_path / "data.h5"
    with h5py.File(dst, "w") as f:
        f["scores"] = np.zeros(3)
    with pytest.raises(
        ModelFileError, match="is an HDF5 file without a Keras model config"
    ):
        ismkernel.load_model(dst)


def test_zip_that_is_not_a_keras_archive(tmp_path):
    dst = rewrite_keras(KERAS, tmp_path, drop=("config.json",))
    with pytest.raises(ModelFileError, match="without config.json"):
        ismkernel.load_model(dst)


def test_config_not_json(h5_copy):
    with h5py.File(h5_copy, "r+") as f:
        f.attrs["model_config"] = "{not json"
    with pytest.raises(ModelFileError, match="not valid JSON"):
        ismkernel.load_model(h5_copy)


def test_missing_weight_dataset_h5(h5_copy):
    with h5py.File(h5_copy, "r+") as f:
        del f["model_weights/conv/conv/bias:0"]
    with pytest.raises(ModelFileError, match=r"weight dataset .*conv/bias:0.* missing"):
        ismkernel.load_model(h5_copy)


def test_unlisted_weight_h5(h5_copy):
    with h5py.File(h5_copy, "r+") as f:
        f["model_weights/conv"].attrs["weight_names"] = [b"conv/kernel:0"]
    with pytest.raises(ModelFileError, match="has no weight 'bias' for this layer"):
        ismkernel.load_model(h5_copy)


def test_missing_weight_keras(tmp_path):
    def edit(f):
        del f["layers/conv1d/vars/1"]

    with pytest.raises(
        ModelFileError, match=r"layer 'conv' \(Conv1D\).*stores 1 variables"
    ):
        ismkernel.load_model(rewrite_keras(KERAS, tmp_path, edit_weights=edit))


def test_wrong_weight_shape_h5(h5_copy):
    with h5py.File(h5_copy, "r+") as f:
        del f["model_weights/conv/conv/kernel:0"]
        f["model_weights/conv/conv/kernel:0"] = np.zeros((5, 4, 7), np.float32)
    with pytest.raises(
        ModelFileError,
        match=r"layer 'conv' \(Conv1D\).*'kernel' has shape \(5, 4, 7\), expected \(5, 4, 8\)",
    ):
        ismkernel.load_model(h5_copy)


def test_wrong_weight_shape_keras(tmp_path):
    def edit(f):
        del f["layers/dense/vars/0"]
        f["layers/dense/vars/0"] = np.zeros((3, 3), np.float32)

    with pytest.raises(
        ModelFileError, match=r"layer 'out' \(Dense\).*'kernel' has shape \(3, 3\)"
    ):
        ismkernel.load_model(rewrite_keras(KERAS, tmp_path, edit_weights=edit))


@pytest.mark.parametrize("kind", ["k2.h5", "k3.keras"])
def test_lambda_layer_is_refused(kind):
    with pytest.raises(
        UnsupportedLayerError,
        match=r"layer 'double_it' \(Lambda\) carries Python code; ismkernel never runs code",
    ):
        ismkernel.load_model(REFUSED / f"lambda_layer.{kind}")


@pytest.mark.parametrize("kind", ["k2.h5", "k3.keras"])
def test_custom_layer_is_refused(kind):
    with pytest.raises(
        UnsupportedLayerError,
        match=r"layer 'my_scale' \(.*ScaleByTwo\) is not a supported layer.*supported: Activation",
    ):
        ismkernel.load_model(REFUSED / f"custom_layer.{kind}")


def test_tf_op_layer_is_refused():
    with pytest.raises(
        UnsupportedLayerError, match=r"\(TFOpLambda\) is a raw TensorFlow op"
    ):
        ismkernel.load_model(REFUSED / "tf_op.k2.h5")


def test_unsupported_option(h5_copy):
    edit_h5_config(
        h5_copy,
        lambda c: _layer(c, "Conv1D")["config"].update(data_format="channels_first"),
    )
    with pytest.raises(
        UnsupportedLayerError,
        match=r"layer 'conv' \(Conv1D\): data_format='channels_first' is not supported",
    ):
        ismkernel.load_model(h5_copy)


def test_unsupported_padding(tmp_path):
    def edit(cfg):
        _layer(cfg, "Conv1D")["config"]["padding"] = "reflect"

    with pytest.raises(
        UnsupportedLayerError,
        match=r"padding='reflect' is not supported; supported: valid, same, causal",
    ):
        ismkernel.load_model(rewrite_keras(KERAS, tmp_path, edit_config=edit))


def test_unsupported_activation(h5_copy):
    edit_h5_config(
        h5_copy, lambda c: _layer(c, "Conv1D")["config"].update(activation="my_act")
    )
    with pytest.raises(
        UnsupportedLayerError, match=r"layer 'conv' \(Conv1D\) uses activation 'my_act'"
    ):
        ismkernel.load_model(h5_copy)


def test_reduced_precision_policy_warns(tmp_path):
    def edit(cfg):
        policy = {
            "module": "keras",
            "class_name": "DTypePolicy",
            "config": {"name": "mixed_float16"},
        }
        _layer(cfg, "Conv1D")["config"]["dtype"] = policy

    with pytest.warns(
        ismkernel.IsmkernelWarning,
        match=r"layer 'conv' \(Conv1D\) was saved with dtype policy 'mixed_float16'; ismkernel computes in float32",
    ):
        ismkernel.load_model(rewrite_keras(KERAS, tmp_path, edit_config=edit))


def test_unknown_layer_reference(h5_copy):
    edit_h5_config(
        h5_copy, lambda c: c["config"].update(output_layers=[["ghost", 0, 0]])
    )
    with pytest.raises(ModelFileError, match="refers to unknown layer 'ghost'"):
        ismkernel.load_model(h5_copy)


def test_model_without_input_shape(h5_copy):
    def edit(cfg):
        _layer(cfg, "InputLayer")["config"].pop("batch_input_shape")

    edit_h5_config(h5_copy, edit)
    with pytest.raises(ModelFileError, match="has no input shape"):
        ismkernel.load_model(h5_copy)


# -- arguments -----------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return ismkernel.load_model(fixture_path(H5))


def _onehot(n, seq_len, n_channels=4):
    rng = np.random.default_rng(0)
    return np.eye(n_channels, dtype=np.float32)[
        rng.integers(0, n_channels, (n, seq_len))
    ]


def test_wrong_length(model):
    with pytest.raises(
        ShapeError,
        match=r"x has shape \(2, 30, 4\) but model input 'dna' expects \(n_seqs, 24, 4\)",
    ):
        model.predict(_onehot(2, 30))
    with pytest.raises(ShapeError, match=r"expects \(n_seqs, 24, 4\)"):
        ismkernel.ism(model, _onehot(2, 30))


def test_wrong_channels_and_rank(model):
    with pytest.raises(ShapeError, match=r"x has shape \(2, 24, 5\)"):
        model.predict(_onehot(2, 24, 5))
    with pytest.raises(ShapeError, match=r"x has shape \(24, 4\)"):
        model.predict(_onehot(1, 24)[0])


@pytest.mark.parametrize(
    "x",
    [
        np.full((1, 24, 4), "A"),
        np.zeros((1, 24, 4), complex),
        np.empty((1, 24, 4), object),
    ],
)
def test_wrong_dtype(model, x):
    with pytest.raises(
        InputError, match=r"x has dtype .*expected a real numeric array"
    ):
        model.predict(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(model, bad):
    x = _onehot(2, 24)
    x[1, 5, 2] = bad
    with pytest.raises(
        InputError,
        match=r"x contains NaN or infinite values \(first at index \(1, 5, 2\)\)",
    ):
        model.predict(x)
    with pytest.raises(InputError, match="NaN or infinite"):
        ismkernel.ism(model, x)


def test_alternatives_wrong_width(model):
    with pytest.raises(
        ShapeError, match=r"alternatives has shape \(4, 5\); expected \(n_alts, 4\)"
    ):
        ismkernel.ism(model, _onehot(1, 24), alternatives=np.eye(4, 5))
    with pytest.raises(ShapeError, match=r"alternatives has shape \(4,\)"):
        ismkernel.ism(model, _onehot(1, 24), alternatives=np.ones(4))
    with pytest.raises(InputError, match="alternatives contains NaN"):
        ismkernel.ism(model, _onehot(1, 24), alternatives=np.full((1, 4), np.nan))


@pytest.mark.parametrize("positions", [[0, 24], [-1], np.array([3, 100])])
def test_positions_out_of_range(model, positions):
    with pytest.raises(
        InputError,
        match=r"positions out of range: .*\(sequence length 24, valid positions 0..23\)",
    ):
        ismkernel.ism(model, _onehot(1, 24), positions=positions)


def test_positions_not_integers(model):
    with pytest.raises(
        InputError, match="positions must be None, a slice or a 1-D integer array"
    ):
        ismkernel.ism(model, _onehot(1, 24), positions=[1.5, 2.0])


def test_bad_seq_input_backend_batch_and_dtype(model):
    x = _onehot(1, 24)
    with pytest.raises(
        InputError, match=r"seq_input='rna' is not a model input; inputs: \['dna'\]"
    ):
        ismkernel.ism(model, x, seq_input="rna")
    with pytest.raises(InputError, match="seq_input=3 is out of range for 1 inputs"):
        ismkernel.ism(model, x, seq_input=3)
    with pytest.raises(
        BackendUnavailableError,
        match="backend 'tpu' is unknown; available: reference, cpu, cuda, "
        "cuda-emulated, auto",
    ):
        ismkernel.ism(model, x, backend="tpu")
    from ismkernel.backends.cuda.memory import probe

    if not probe()[0]:  # (tests/test_cuda_backend.py checks the reasons)
        with pytest.raises(
            BackendUnavailableError,
            match="backend 'cuda' needs a CUDA GPU reachable by CuPy and numba-cuda",
        ):
            ismkernel.ism(model, x, backend="cuda")
    with pytest.raises(
        InputError, match="batch_size must be a positive integer or None, got 0"
    ):
        ismkernel.ism(model, x, batch_size=0)
    with pytest.raises(InputError, match="dtype='float16' is not supported"):
        model.predict(x, dtype="float16")


def test_multi_input_arguments():
    model = ismkernel.load_model(fixture_path("multi_input.k3.keras"))
    assert model.input_names == ["covariates", "dna", "table"]
    cov, dna, tab = np.zeros((2, 5)), _onehot(2, 24), np.zeros((2, 3, 2))
    with pytest.raises(
        InputError,
        match=r"the model has 3 inputs \(\['covariates', 'dna', 'table'\]\); pass x as a list",
    ):
        model.predict(dna)
    with pytest.raises(
        InputError, match="x is a list of 2 arrays; the model has 3 inputs"
    ):
        model.predict([cov, dna])
    with pytest.raises(InputError, match=r"missing \['table'\]"):
        model.predict({"covariates": cov, "dna": dna})
    with pytest.raises(ShapeError, match=r"x\['table'\] has shape \(2, 2, 3\)"):
        model.predict({"covariates": cov, "dna": dna, "table": np.zeros((2, 2, 3))})
    with pytest.raises(ShapeError, match="hold different numbers of sequences"):
        model.predict([cov, dna[:1], tab])
    with pytest.raises(
        ShapeError, match=r"ISM mutates an input of shape \(seq_len, n_channels\)"
    ):
        ismkernel.ism(model, [cov, dna, tab], seq_input="covariates")
