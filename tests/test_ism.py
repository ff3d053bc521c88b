"""ism(): result layout, the copy-the-reference rule and argument forms."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fixture_path
from naive import mutate

import ismkernel


@pytest.fixture(scope="module")
def bpnet():
    return ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))


def _onehot(n, seq_len, seed=0):
    rng = np.random.default_rng(seed)
    return np.eye(4, dtype=np.float32)[rng.integers(0, 4, (n, seq_len))]


def test_full_ism_equals_explicit_mutation(bpnet):
    """Every position and base, two sequences: against predict on mutated copies."""
    x = _onehot(2, 40)
    result = ismkernel.ism(bpnet, x, batch_size=50)
    assert [o.shape for o in result.outputs] == [(2, 40, 4, 24, 2), (2, 40, 4, 2)]
    np.testing.assert_array_equal(result.positions, np.arange(40))
    np.testing.assert_array_equal(result.alternatives, np.eye(4))
    for n in range(2):
        mutants = np.stack([mutate(x[n], p, a) for p in range(40) for a in np.eye(4)])
        ref = bpnet.predict(mutants)
        for k, r in enumerate(ref):
            comp = result.outputs[k][n].reshape(r.shape)
            np.testing.assert_allclose(comp, r, rtol=1e-6, atol=1e-6)


def test_reference_base_is_copied_not_recomputed(bpnet):
    x = _onehot(3, 40, seed=1)
    result = ismkernel.ism(bpnet, x, positions=slice(0, 40, 3))
    for n in range(3):
        for p_i, p in enumerate(result.positions):
            base = int(np.argmax(x[n, p]))
            for k in range(2):
                np.testing.assert_array_equal(
                    result.outputs[k][n, p_i, base], result.reference[k][n]
                )
    delta = result.delta()
    assert delta[1].shape == result.outputs[1].shape
    base = np.argmax(x[:, result.positions], axis=-1)
    picked = np.take_along_axis(delta[1], base[:, :, None, None], axis=2)
    assert not picked.any()


def test_positions_forms(bpnet):
    x = _onehot(1, 40)
    full = ismkernel.ism(bpnet, x, backend="reference")
    for positions, expected in [
        (slice(5, 9), np.arange(5, 9)),
        ([0, 39, 39, 7], np.array([0, 39, 39, 7])),
        (np.int64(3), np.array([3])),
    ]:
        result = ismkernel.ism(bpnet, x, positions=positions, backend="reference")
        np.testing.assert_array_equal(result.positions, expected)
        for k in range(2):
            np.testing.assert_allclose(
                result.outputs[k], full.outputs[k][:, expected], rtol=1e-6, atol=1e-7
            )


def test_custom_alternatives_and_n_row(bpnet):
    x = _onehot(1, 40)
    alts = np.array([[0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0, 1, 0, 0]], np.float32)
    result = ismkernel.ism(bpnet, x, alternatives=alts, positions=[0, 20, 39])
    assert result.outputs[0].shape == (1, 3, 3, 24, 2)
    for p_i, p in enumerate([0, 20, 39]):
        for a_i, a in enumerate(alts):
            ref = bpnet.predict(mutate(x[0], p, a)[None])
            np.testing.assert_allclose(
                result.outputs[1][0, p_i, a_i], ref[1][0], rtol=1e-6, atol=1e-7
            )


def test_multi_input_dict_and_default_seq_input():
    model = ismkernel.load_model(fixture_path("multi_input.k2.h5"))
    rng = np.random.default_rng(3)
    cov = rng.normal(size=(2, 5)).astype(np.float32)
    tab = rng.normal(size=(2, 3, 2)).astype(np.float32)
    dna = _onehot(2, 24)
    by_dict = ismkernel.ism(
        model, {"dna": dna, "table": tab, "covariates": cov}, positions=[0, 23]
    )
    by_list = ismkernel.ism(model, [cov, dna, tab], positions=[0, 23], seq_input="dna")
    assert by_dict.seq_input == "dna"  # the 4-channel input, though not the first
    for a, b in zip(by_dict.outputs, by_list.outputs):
        np.testing.assert_array_equal(a, b)
    # The non-sequence inputs stay those of each sequence.
    mutant = mutate(dna[1], 23, np.eye(4)[0])
    ref = model.predict([cov[1:], mutant[None], tab[1:]])
    np.testing.assert_allclose(
        by_dict.outputs[0][1, 1, 0], ref[0][0], rtol=1e-6, atol=1e-7
    )
    # The z output does not depend on the sequence at all.
    np.testing.assert_array_equal(
        by_dict.outputs[1],
        np.broadcast_to(by_dict.reference[1][:, None, None], by_dict.outputs[1].shape),
    )


def test_float64_and_progress(bpnet, capsys):
    x = _onehot(1, 40)
    result = ismkernel.ism(bpnet, x, positions=[1, 2], dtype="float64", progress=True)
    assert result.outputs[0].dtype == np.float64
    assert result.alternatives.dtype == np.float64
    err = capsys.readouterr().err
    assert "ISM" in err and "8/8" in err
    assert result.backend == "cpu"
    assert result.output_names == ["profile", "counts"]


def test_empty_positions(bpnet):
    result = ismkernel.ism(bpnet, _onehot(2, 40), positions=[])
    assert result.outputs[0].shape == (2, 0, 4, 24, 2)


def test_select_outputs_drops_what_only_other_outputs_need():
    from conftest import ONNX_FIXTURES

    model = ismkernel.load_model(ONNX_FIXTURES / "bpnet.onnx")
    counts = model.select_outputs(["view"])
    assert counts.output_names == ["view"]
    assert len(counts.graph.nodes) < len(model.graph.nodes)
    x = np.load(ONNX_FIXTURES / "bpnet.npz")["x_onehot_0"]
    np.testing.assert_array_equal(counts.predict(x)[0], model.predict(x)[1])
    with pytest.raises(ismkernel.InputError, match="not model outputs"):
        model.select_outputs(["nope"])
