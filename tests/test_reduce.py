"""Reducers and output selection, against their NumPy formulas on raw results."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ONNX_FIXTURES, fixture_inputs, fixture_path
from random_graphs import Builder

import ismkernel
from ismkernel.errors import InputError
from ismkernel.ir import nodes as ops
from ismkernel.model import Model


def _profile_model():
    """A profile output (L', 3) and a positive count output (2,)."""
    b = Builder(20, seed=4)
    c = b.conv(b.seq, 6, 5)
    r = b.add(ops.Activation("relu"), [c])
    profile = b.conv(r, 3, 3, padding="valid")
    pooled = b.add(ops.GlobalPool1D("average"), [r])
    dense = b.add(ops.Dense(2), [pooled], kernel=b.w(6, 2), bias=b.w(2))
    counts = b.add(ops.Activation("softplus"), [dense])
    b.g.outputs = b.g.output_names = [profile, counts]
    return Model(b.g)


@pytest.fixture(scope="module")
def result():
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(1).integers(0, 4, (2, 20))]
    return ismkernel.ism(_profile_model(), x, backend="cpu", positions=[0, 5, 19])


def _formula(kind, mut, ref):
    ref = ref[:, None, None]
    delta = mut - ref
    return {
        "raw": mut,
        "delta": delta,
        "log2fc": np.log2(mut) - np.log2(ref) if (mut > 0).all() else None,
        "mean-centred": delta - delta.mean(axis=2, keepdims=True),
        "l2": np.sqrt((delta**2).sum(axis=2)),
    }[kind]


@pytest.mark.parametrize("kind", ["raw", "delta", "log2fc", "mean-centred", "l2"])
def test_reducers_match_their_formulas(result, kind):
    (got,) = result.reduce(kind, outputs=result.output_names[1])
    k = 1
    expected = _formula(kind, result.outputs[k], result.reference[k])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    if kind == "l2":
        assert got.shape == result.outputs[k].shape[:2] + result.outputs[k].shape[3:]


def test_delta_and_mean_centred_on_a_profile(result):
    for kind in ("delta", "mean-centred", "l2"):
        (got,) = result.reduce(kind, outputs=0)
        np.testing.assert_allclose(
            got, _formula(kind, result.outputs[0], result.reference[0]), rtol=1e-6
        )


def test_log2fc_refuses_non_positive_outputs(result):
    with pytest.raises(InputError, match="log2fc needs positive outputs.*'conv1d_"):
        result.reduce("log2fc", outputs=0)


def test_tasks_and_sum_over(result):
    (got,) = result.reduce("delta", outputs=0, tasks=[2, 0], sum_over="3:10")
    mut = result.outputs[0][..., 3:10, :][..., [2, 0]].sum(axis=-2)
    ref = result.reference[0][:, 3:10][..., [2, 0]].sum(axis=-2)
    np.testing.assert_allclose(got, mut - ref[:, None, None], rtol=1e-5, atol=1e-6)
    assert got.shape == (2, 3, 4, 2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"outputs": "nope"}, "'nope' is not a model output"),
        ({"outputs": 0, "tasks": [3]}, "tasks \\[3\\] out of range .* 3 channels"),
        ({"outputs": 1, "sum_over": "0:2"}, "needs a profile output"),
        ({"outputs": 0, "sum_over": "5:99"}, "out of range for output"),
        ({"outputs": 0, "sum_over": "5"}, "must be START:END"),
    ],
)
def test_selection_errors(result, kwargs, match):
    with pytest.raises(InputError, match=match):
        result.reduce("delta", **kwargs)


def test_ism_reduce_argument_sets_scores():
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(2).integers(0, 4, (1, 20))]
    model = _profile_model()
    res = ismkernel.ism(model, x, reduce="mean-centred", backend="reference")
    for got, want in zip(res.scores, res.reduce("mean-centred")):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(InputError, match="reduce must be one of"):
        ismkernel.ism(model, x, reduce="zscore")


def test_channels_first_profile_axes_follow_the_model_layout():
    """ONNX outputs keep PyTorch's (C, L) layout; tasks and sum_over find the
    channel and length axes there."""
    model = ismkernel.load_model(ONNX_FIXTURES / "bpnet.onnx")
    axes = model.output_axes[0]
    assert (axes.channels, axes.length) == (0, 1)
    x = np.load(ONNX_FIXTURES / "bpnet.npz")["x_onehot_0"][:1]
    res = ismkernel.ism(model, x, positions=[3, 30])
    (got,) = res.reduce("delta", outputs=0, tasks=[1], sum_over="0:10")
    mut = res.outputs[0][:, :, :, 1, 0:10].sum(-1)
    ref = res.reference[0][:, 1, 0:10].sum(-1)
    np.testing.assert_allclose(
        got[..., 0], mut - ref[:, None, None], rtol=1e-5, atol=1e-6
    )


def test_keras_fixture_reduce_runs_on_every_output():
    model = ismkernel.load_model(fixture_path("bpnet_mini.k2.h5"))
    data = np.load(fixture_path("bpnet_mini.k2.npz"))
    xs = fixture_inputs({k: data[k] for k in data.files}, "onehot")
    res = ismkernel.ism(model, xs if len(xs) > 1 else xs[0], positions=[0, 7])
    assert len(res.reduce("l2")) == len(model.outputs)
