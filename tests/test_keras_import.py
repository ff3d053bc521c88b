"""Every Keras-built fixture: the reference backend against Keras itself."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    MANIFEST,
    assert_close_keras,
    fixture_data,
    fixture_inputs,
    fixture_path,
)

import ismkernel


def test_there_are_enough_fixtures():
    models = {v["model"] for v in MANIFEST.values()}
    kinds = {name.split(".", 1)[1] for name in MANIFEST}
    assert len(models) >= 30
    assert kinds == {"k2.h5", "k3.keras", "k3.h5"}


@pytest.mark.parametrize("kind", ["onehot", "float"])
def test_predict_matches_keras(model_file, kind):
    model = ismkernel.load_model(fixture_path(model_file))
    data = fixture_data(model_file)
    comp = model.predict(fixture_inputs(data, kind))
    assert len(comp) == MANIFEST[model_file]["n_outputs"]
    for k, y in enumerate(comp):
        assert y.dtype == np.float32
        assert_close_keras(y, data[f"y_{kind}_{k}"], f"{model_file} output {k}")


def test_model_metadata(model_file):
    model = ismkernel.load_model(fixture_path(model_file))
    data = fixture_data(model_file)
    xs = fixture_inputs(data, "onehot")
    assert len(model.inputs) == len(xs)
    for spec, x in zip(model.inputs, xs):
        assert all(d is None or d == s for d, s in zip(spec.shape, x.shape[1:]))
    for k, spec in enumerate(model.outputs):
        comp = data[f"y_onehot_{k}"].shape[1:]
        assert len(spec.shape) == len(comp)
        assert all(d is None or d == s for d, s in zip(spec.shape, comp))
    assert model.output_names == [s.name for s in model.outputs]
    assert model.format in ("keras-h5", "keras-v3")
    text = model.summary()
    for name in model.input_names + model.output_names:
        assert name.split(":")[0] in text


def test_naive_ism_matches_keras_mutants(model_file):
    """ISM at edge and inner positions, for one-hot, all-zero and uniform rows."""
    model = ismkernel.load_model(fixture_path(model_file))
    data = fixture_data(model_file)
    xs = [x[:1] for x in fixture_inputs(data, "onehot")]
    seq_input = int(data["seq_input"])
    result = ismkernel.ism(
        model,
        xs,
        positions=data["positions"],
        alternatives=data["alternatives"],
        seq_input=seq_input,
        backend="reference",
        batch_size=7,  # not a divisor of the number of mutants
    )
    assert result.seq_input == model.input_names[seq_input]
    for k, out in enumerate(result.outputs):
        assert_close_keras(out[0], data[f"ism_{k}"], f"{model_file} ISM output {k}")
        assert_close_keras(result.reference[k], data[f"y_onehot_{k}"][:1], "reference")


def test_float64_is_closer_to_itself_than_to_tolerance(model_file):
    model = ismkernel.load_model(fixture_path(model_file))
    data = fixture_data(model_file)
    xs = fixture_inputs(data, "float")
    comp32 = model.predict(xs)
    comp64 = model.predict(xs, dtype="float64")
    for a, b in zip(comp32, comp64):
        assert b.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_batch_size_does_not_change_predictions():
    model = ismkernel.load_model(fixture_path("basset_mini.k3.keras"))
    data = fixture_data("basset_mini.k3.keras")
    x = np.concatenate([data["x_onehot_0"], data["x_float_0"]])
    whole = model.predict(x)
    for batch_size in (1, 2, 4):
        parts = model.predict(x, batch_size=batch_size)
        # BLAS blocks differently per batch size: equal to float32 rounding.
        np.testing.assert_allclose(parts[0], whole[0], rtol=1e-6, atol=1e-7)


def test_keras2_and_keras3_files_of_one_architecture_read_alike():
    """Same architecture, two Keras generations: identical IR structure."""
    for name in ("bpnet_mini", "nested_functional", "shared_nested", "multi_input"):
        g2 = ismkernel.load_model(fixture_path(f"{name}.k2.h5")).graph
        g3 = ismkernel.load_model(fixture_path(f"{name}.k3.keras")).graph
        kinds2 = [(n.op.kind, n.shape) for n in g2.nodes.values()]
        kinds3 = [(n.op.kind, n.shape) for n in g3.nodes.values()]
        assert sorted(kinds2, key=str) == sorted(kinds3, key=str)


def test_shared_layers_share_weight_arrays():
    graph = ismkernel.load_model(fixture_path("shared_layers.k3.keras")).graph
    first, second = graph.nodes["shared_conv"], graph.nodes["shared_conv@1"]
    assert first.weights["kernel"] is second.weights["kernel"]
    nested = ismkernel.load_model(fixture_path("shared_nested.k2.h5")).graph
    assert (
        nested.nodes["blk/bc"].weights["kernel"]
        is nested.nodes["blk@1/bc"].weights["kernel"]
    )


def test_free_length_model_runs_at_other_lengths():
    model = ismkernel.load_model(fixture_path("free_length.k3.keras"))
    assert model.inputs[0].shape == (None, 4)
    rng = np.random.default_rng(0)
    for seq_len in (9, 40):
        x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (2, seq_len))]
        gmp, seq = model.predict(x)
        assert gmp.shape == (2, 4)
        np.testing.assert_allclose(gmp, seq.max(axis=1), rtol=1e-6)


@pytest.mark.parametrize("name", ["dict_io.k2.h5", "dict_io.k3.keras", "dict_io.k3.h5"])
def test_dict_inputs_and_outputs_in_sorted_key_order(name):
    """Keras flattens dicts by sorted key; that is the model's order."""
    model = ismkernel.load_model(fixture_path(name))
    assert model.input_names == ["a_cov", "b_dna"]
    assert model.output_names == ["y_head", "z_head"]
    data = fixture_data(name)
    x = dict(zip(model.input_names, fixture_inputs(data, "float")))
    for k, y in enumerate(model.predict(x)):
        assert_close_keras(y, data[f"y_float_{k}"], f"{name} output {k}")
