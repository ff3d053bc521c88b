"""Ensembles: members' outputs averaged before reducing, each member on its
own plan; against the reference backend's ISM of each member."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import fixture_data, fixture_inputs, fixture_path
from random_graphs import Builder

import ismkernel
from ismkernel.ensemble import Ensemble
from ismkernel.errors import InputError, ShapeError
from ismkernel.ir import nodes as ops
from ismkernel.ism import EnsembleRun
from ismkernel.model import Model

POS = [0, 5, 17, 39]


def _reweighted(model: Model, seed: int, path: str) -> Model:
    """``model`` with every weight scaled by a random factor in [0.5, 1.5]: a
    member of the same architecture with other weights."""
    graph = copy.deepcopy(model.graph)
    rng = np.random.default_rng(seed)
    for node in graph.nodes.values():
        for name, w in node.weights.items():
            scale = rng.uniform(0.5, 1.5, w.shape).astype(w.dtype)
            node.weights[name] = w * scale
    return Model(graph, path=path)


@pytest.fixture(scope="module")
def members():
    first = ismkernel.load_model(fixture_path("bpnet_mini.k2.h5"))
    return [first, _reweighted(first, 1, "bpnet_other.h5")]


@pytest.fixture(scope="module")
def x():
    return fixture_inputs(fixture_data("bpnet_mini.k2.h5"), "onehot")[0][:2]


def test_ensemble_ism_is_the_mean_of_its_members(backend, members, x):
    comp = ismkernel.ism(models=members, x=x, positions=POS, backend=backend)
    refs = [ismkernel.ism(m, x, positions=POS, backend="reference") for m in members]
    assert comp.stats["n_members"] == 2
    for k in range(len(comp.outputs)):
        ref = (refs[0].outputs[k] + refs[1].outputs[k]) / 2
        scale = np.abs(ref).max()
        assert np.abs(comp.outputs[k] - ref).max() <= 1e-4 * scale
        np.testing.assert_allclose(
            comp.reference[k],
            (refs[0].reference[k] + refs[1].reference[k]) / 2,
            rtol=1e-5,
            atol=1e-6 * scale,
        )
    same = ismkernel.ism(members, x, positions=POS, backend=backend)  # a list
    for a, b in zip(same.outputs, comp.outputs):
        np.testing.assert_array_equal(a, b)


def test_ensemble_predict_is_the_mean_of_its_members(members, x):
    comp = Ensemble(members).predict(x)
    for k, out in enumerate(comp):
        ref = (members[0].predict(x)[k] + members[1].predict(x)[k]) / 2
        np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_ensemble_reduces_after_averaging(members, x):
    name = members[0].output_names[0]  # the profile
    ens = Ensemble(members).select_outputs([name])
    kept = ismkernel.ism(ens, x, positions=POS)
    run = EnsembleRun(ens, positions=POS)
    for kind, opts in (("delta", {}), ("max", {"around": 5}), ("min", {})):
        scored = run(x, reduce=kind, keep_outputs=False, **opts)
        assert scored.outputs is None
        want = kept.reduce(kind, **opts)[0]
        np.testing.assert_array_equal(scored.scores[0], want)
    # max of the mean is not the mean of the members' max
    each = [ismkernel.ism(m, x, positions=POS, reduce="max") for m in ens.members]
    mean_of_max = (each[0].scores[0][..., 0] + each[1].scores[0][..., 0]) / 2
    assert not np.allclose(kept.reduce("max")[0][..., 0], mean_of_max)


def test_each_member_plans_once_per_run(monkeypatch, members, x):
    from ismkernel.backends import engine

    calls = []
    real = engine.build_plan

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "build_plan", counting)
    run = EnsembleRun(Ensemble(members), positions=POS)
    run(x[:1])
    run(x[1:])
    assert len(calls) == len(members)


def _square(perms: bool) -> Model:
    """A (4, 4) -> (4, 4) model, channels last, or first with ``perms``."""
    b = Builder(4, seed=1)
    out = b.conv(b.seq, 4, 3)
    b.g.outputs = b.g.output_names = [out]
    if perms:
        return Model(b.g, path="cf.onnx", input_perms=[(1, 0)], output_perms=[(1, 0)])
    return Model(b.g, path="cl.h5")


def test_ensemble_errors(members):
    basset = ismkernel.load_model(fixture_path("basset_mini.k2.h5"))
    with pytest.raises(
        ShapeError,
        match=r"ensemble member 1 \('basset_mini.k2.h5'\) has inputs of shape .* but "
        r"member 0 \('bpnet_mini.k2.h5'\) has .*; ensemble members must share",
    ):
        ismkernel.ism(models=[members[0], basset], x=np.zeros((1, 100, 4)))
    with pytest.raises(ShapeError, match=r"member 1 \('cf.onnx'\) lays out its inputs"):
        Ensemble([_square(False), _square(True)])
    with pytest.raises(InputError, match="ensemble member 1 is a str, not a Model"):
        Ensemble([members[0], "b.h5"])
    with pytest.raises(InputError, match="an ensemble needs at least one model"):
        Ensemble([])
    with pytest.raises(InputError, match="either model .* or models=.*not both"):
        ismkernel.ism(members[0], np.zeros((1, 100, 4)), models=members)
    with pytest.raises(InputError, match="give a model, or models="):
        ismkernel.ism(x=np.zeros((1, 100, 4)))
    with pytest.raises(InputError, match="ism\\(\\) needs the sequences x"):
        ismkernel.ism(models=members)
    with pytest.raises(InputError, match="model must be a Model .* got str"):
        ismkernel.ism("model.h5", np.zeros((1, 100, 4)))
    with pytest.raises(InputError, match="outputs \\['nope'\\] are not model outputs"):
        Ensemble(members).select_outputs(["nope"])


def test_members_that_differ_only_once_the_length_is_known():
    """Free-length members may crop differently: their outputs are checked
    again on the sequences given."""
    models = []
    for crop in (1, 2):
        b = Builder(None, seed=3)
        c = b.conv(b.seq, 3, 3)
        cropped = b.add(ops.Crop1D(crop, crop), [c])
        b.g.outputs = b.g.output_names = [cropped]
        models.append(Model(b.g, path=f"crop{crop}.h5"))
    with pytest.raises(
        ShapeError,
        match=r"member 1 \('crop2.h5'\) gives outputs of shape .* on these sequences",
    ):
        ismkernel.ism(models=models, x=np.eye(4, dtype=np.float32)[None, [0, 1] * 6])
