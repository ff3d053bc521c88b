"""Window scans, pairwise double mutants and design equal explicit
``Model.predict`` on the edited sequences, on every fixture and on random
graphs; the proofs of independence hold; bad arguments are refused."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    MODEL_FILES,
    ONNX_FIXTURES,
    fixture_data,
    fixture_inputs,
    fixture_path,
    onnx_manifest,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_graphs import Builder, random_models

import ismkernel
from ismkernel.analyses import design, pairwise, scan, shuffles
from ismkernel.errors import InputError, ShapeError
from ismkernel.inputs import seq_input_index
from ismkernel.ir import nodes as ops
from ismkernel.model import Model, _from_ir, _to_ir

FIXTURES = [fixture_path(n) for n in MODEL_FILES] + [
    ONNX_FIXTURES / n for n in sorted(onnx_manifest())
]


def _load(path):
    """Model, its inputs (model layout) and the index of the mutated one, or
    skip if it has no (length, channels) input to edit."""
    model = ismkernel.load_model(path)
    if path.suffix == ".onnx":
        with np.load(ONNX_FIXTURES / onnx_manifest()[path.name]["npz"]) as d:
            data = {k: d[k] for k in d.files}
    else:
        data = fixture_data(path.name)
    xs = fixture_inputs(data, "onehot")
    model = model.specialize(xs if len(xs) > 1 else xs[0])
    try:
        index = seq_input_index(model.graph.input_specs, None)
    except ShapeError:
        pytest.skip("no (length, channels) input to edit")
    return model, xs, index


def _edited(model, xs, index, n, seq_ir):
    """Model inputs with the mutated one replaced by the IR-layout ``seq_ir``
    (``(n * reps, length, channels)``), the others repeated alike."""
    reps = len(seq_ir) // n
    out = [np.repeat(x[:n], reps, axis=0) for x in xs]
    out[index] = _from_ir(seq_ir, model.input_perms[index], 1)
    return out if len(out) > 1 else out[0]


def _given(xs, n):
    return [x[:n] for x in xs] if len(xs) > 1 else xs[0][:n]


def _assert_close(comp, want, what):
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(comp - want).max()) / scale
    assert err <= 1e-4, f"{what}: rel err {err:.2e}"


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_scans_equal_predict_on_the_edited_sequences(path):
    model, xs, index = _load(path)
    x_ir = _to_ir(xs[index], model.input_perms[index], 1)[:2]
    n, length, ch = x_ir.shape
    rng = np.random.default_rng(0)
    w = min(5, length)  # wider than the fixtures' pooling strides
    patterns = np.stack([np.zeros((w, ch)), np.eye(ch)[rng.integers(0, ch, w)]]).astype(
        np.float32
    )
    last = length - w
    starts = np.unique([0, 1, last // 2, max(last - 1, 0), last])
    res = scan(model, _given(xs, n), patterns, starts=starts)
    edited = np.repeat(x_ir[:, None, None], len(starts), axis=1)
    edited = np.repeat(edited, len(patterns), axis=2)
    for s_i, s in enumerate(starts):
        edited[:, s_i, :, s : s + w] = patterns[None]
    want = model.predict(_edited(model, xs, index, n, edited.reshape((-1, length, ch))))
    for k, y in enumerate(want):
        y = y.reshape((n, len(starts), len(patterns)) + y.shape[1:])
        _assert_close(res.outputs[k], y, f"{path.name} output {k}")


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_pairs_equal_predict_on_the_double_mutants(path):
    model, xs, index = _load(path)
    x_ir = _to_ir(xs[index], model.input_perms[index], 1)[:1]
    _, length, ch = x_ir.shape
    d = min(4, length - 1)
    # pairs at every distance 1..d at both ends and in the middle (some
    # straddle every pooling boundary there)
    mid = length // 2
    positions = np.unique(
        np.r_[
            np.arange(d + 2),
            np.arange(mid - 2, mid + 3),
            np.arange(length - d - 2, length),
        ]
    )
    positions = positions[(positions >= 0) & (positions < length)]
    alts = np.eye(ch, dtype=np.float32)[: min(ch, 3)]
    res = pairwise(
        model,
        _given(xs, 1),
        positions=positions,
        max_distance=d,
        alternatives=alts,
    )
    assert set(np.diff(res.pairs, axis=1).ravel()) == set(range(1, d + 1))
    n_a = len(alts)
    edited = np.repeat(x_ir, len(res.pairs) * n_a * n_a, axis=0).reshape(
        (len(res.pairs), n_a, n_a, length, ch)
    )
    for p_i, (i, j) in enumerate(res.pairs):
        edited[p_i, :, :, i] = alts[:, None]
        edited[p_i, :, :, j] = alts[None, :]
    want = model.predict(_edited(model, xs, index, 1, edited.reshape((-1, length, ch))))
    for k, y in enumerate(want):
        y = y.reshape((1, len(res.pairs), n_a, n_a) + y.shape[1:])
        _assert_close(res.outputs[k], y, f"{path.name} output {k}")
        eps = res.epistasis(k)
        singles = res.singles[k]
        np.testing.assert_allclose(
            eps,
            y
            - singles[:, :, 0, :, None]
            - singles[:, :, 1, None, :]
            + res.reference[k][:, None, None, None],
            atol=2e-4 * max(float(np.abs(y).max()), 1e-30),
        )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(random_models(), st.data())
def test_scans_and_pairs_on_random_graphs(backend, graph, data):
    model = Model(graph)
    length = graph.nodes[graph.inputs[0]].shape[0]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (2, length))]
    w = data.draw(st.integers(1, min(6, length)))
    starts = data.draw(
        st.lists(st.integers(0, length - w), min_size=1, max_size=4, unique=True)
    )
    patterns = rng.normal(size=(2, w, 4)).astype(np.float32)
    res = scan(model, x, patterns, starts=starts, backend=backend)
    edited = np.repeat(np.repeat(x[:, None, None], len(starts), 1), 2, 2)
    for s_i, s in enumerate(starts):
        edited[:, s_i, :, s : s + w] = patterns
    for k, y in enumerate(model.predict(edited.reshape(-1, length, 4))):
        _assert_close(res.outputs[k], y.reshape(res.outputs[k].shape), "scan")
    i = data.draw(st.integers(0, length - 2))
    j = data.draw(st.integers(i + 1, length - 1))
    alts = np.vstack([np.eye(4), np.full(4, 0.25)])[:3].astype(np.float32)
    res = pairwise(model, x, pairs=[[j, i]], alternatives=alts, backend=backend)
    edited = np.repeat(x[:, None, None], 3, 1).repeat(3, 2)
    edited[:, :, :, i] = alts[:, None]
    edited[:, :, :, j] = alts[None, :]
    for k, y in enumerate(model.predict(edited.reshape(-1, length, 4))):
        _assert_close(
            res.outputs[k][:, 0], y.reshape(res.outputs[k][:, 0].shape), "pair"
        )


def test_pairs_that_never_meet_are_not_computed_and_do_not_interact():
    """conv -> relu -> linear head: changes further apart than the first
    convolution's reach never meet at the ReLU."""
    b = Builder(40)
    r = b.add(ops.Activation("relu"), [b.conv(b.seq, 6, 3)])
    out = b.conv(r, 2, 3)
    b.g.outputs = b.g.output_names = [b.add(ops.GlobalPool1D("sum"), [out]), out]
    model = Model(b.g.finalize())
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(1).integers(0, 4, (2, 40))]
    res = pairwise(model, x, pairs=[[5, 6], [5, 7], [5, 8], [5, 9], [10, 30]])
    # rows of the ReLU a change at i reaches: [i - 1, i + 2); they meet up to 2 apart
    assert res.independent.tolist() == [False, False, True, True, True]
    assert res.stats["n_independent"] == 3
    for k in range(2):
        eps = res.epistasis(k)
        assert not eps[:, res.independent].any()  # exactly zero, not computed
        assert np.abs(eps[:, ~res.independent]).max() > 0
    for p_i, (i, j) in enumerate(res.pairs):
        for a in range(4):
            for c in range(4):
                xx = x.copy()
                xx[:, i], xx[:, j] = np.eye(4)[a], np.eye(4)[c]
                for k, y in enumerate(model.predict(xx)):
                    _assert_close(res.outputs[k][:, p_i, a, c], y, f"pair {i},{j}")


def test_pair_reducers_and_matrix():
    """``reduce`` (any spelling) is the epistasis's largest magnitude or L2
    norm over each pair's alternatives; ``matrix`` lays a scalar score out
    symmetrically over the whole sequence, NaN off the pairs."""
    b = Builder(30, seed=3)
    r = b.add(ops.Activation("relu"), [b.conv(b.seq, 5, 3)])
    b.g.outputs = b.g.output_names = [b.add(ops.GlobalPool1D("sum"), [b.conv(r, 2, 3)])]
    model = Model(b.g.finalize())
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(5).integers(0, 4, (2, 30))]
    res = pairwise(model, x, positions=np.arange(3, 9), max_distance=2, tasks=[1])
    eps = res.epistasis(0)
    assert np.abs(eps).max() > 0
    for kind, spelling, want in [
        ("max-abs", "MAX_ABS", np.abs(eps).max(axis=(2, 3))),
        ("l2", "L2", np.sqrt((eps * eps).sum(axis=(2, 3)))),
    ]:
        np.testing.assert_array_equal(res.reduce(kind), want)
        again = pairwise(
            model, x, positions=np.arange(3, 9), max_distance=2, tasks=[1],
            reduce=spelling,
        )  # fmt: skip
        np.testing.assert_array_equal(again.scores[0], want)
        m = again.matrix(kind=kind)
        assert m.shape == (2, 30, 30)
        for p_i, (i, j) in enumerate(res.pairs):
            assert m[0, i, j] == m[0, j, i] == want[0, p_i, 0]
        off = np.ones((30, 30), bool)
        off[res.pairs[:, 0], res.pairs[:, 1]] = off[
            res.pairs[:, 1], res.pairs[:, 0]
        ] = 0
        assert np.isnan(m[:, off]).all()
    with pytest.raises(InputError, match="did you mean 'max-abs'"):
        res.reduce("maxabs_")


@pytest.mark.parametrize(
    "name", ["basset_mini.k2.h5", "bpnet_mini.k3.keras"], ids=lambda n: n
)
@pytest.mark.parametrize("goal", ["max", "min"])
def test_design_equals_explicit_rounds_of_reference_ism(name, goal):
    model = ismkernel.load_model(fixture_path(name))
    x = fixture_inputs(fixture_data(name), "onehot")[0][:2]
    objective = {"output": 0, "tasks": [0], "goal": goal}
    axes = model.output_axes[0]
    if axes.length is not None:
        objective["sum_over"] = "2:9"
    res = design(model, x, objective, rounds=3)
    cur = x.copy()
    sign = 1 if goal == "max" else -1
    for r in range(3):
        ref = ismkernel.ism(model, cur, backend="reference")
        mut, base = ref.selected(0, [0], objective.get("sum_over"))
        value = sign * mut.reshape(mut.shape[:3] + (-1,)).sum(-1).astype(np.float64)
        same = np.all(cur[:, :, None, :] == np.eye(4)[None, None], axis=-1)
        value[same] = -np.inf
        for n in range(len(cur)):
            p, a = divmod(int(np.argmax(value[n])), 4)
            assert tuple(res.edits[n, r]) == (p, a)
            assert res.objective[n, r + 1] == pytest.approx(
                sign * value[n].max(), rel=1e-5, abs=1e-6
            )
            cur[n, p] = np.eye(4)[a]
        if r == 0:
            start = base.reshape(len(cur), -1).sum(-1)
            np.testing.assert_allclose(res.objective[:, 0], start, rtol=1e-5)
    np.testing.assert_array_equal(res.sequences, cur)


def test_beam_design_keeps_the_best_distinct_sequences_and_stops_at_tol():
    model = ismkernel.load_model(fixture_path("basset_mini.k2.h5"))
    x = fixture_inputs(fixture_data("basset_mini.k2.h5"), "onehot")[0][:1]
    greedy = design(model, x, "max", rounds=2, positions=slice(0, 12))
    beam = design(model, x, "max", rounds=2, positions=slice(0, 12), beam=4)
    assert beam.beam.shape == (1, 4) + x.shape[1:]
    assert len({b.tobytes() for b in beam.beam[0]}) == 4
    assert beam.objective[0, -1] >= greedy.objective[0, -1] - 1e-6
    # the beam's best sequence is its reported one, and its objective holds
    final = model.predict(beam.sequences)[0].sum(axis=-1)
    assert final[0] == pytest.approx(beam.objective[0, -1], rel=1e-5)
    stop = design(model, x, "max", rounds=5, positions=slice(0, 12), tol=1e9)
    assert (stop.edits == -1).all() and np.isnan(stop.objective[0, 1:]).all()


def test_shuffles_keep_dinucleotides_and_are_reproducible():
    rng = np.random.default_rng(0)
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (2, 60))]
    x[1, 10:13] = 0  # N rows are a symbol of their own
    out = shuffles(x, [0, 7, 40], 20, 5, seed=3)
    assert out.shape == (2, 3, 5, 20, 4)
    np.testing.assert_array_equal(out, shuffles(x, [0, 7, 40], 20, 5, seed=3))
    for n in range(2):
        for s_i, s in enumerate([0, 7, 40]):
            window = x[n, s : s + 20]
            for sh in out[n, s_i]:

                def counts(w):
                    keys = [
                        w[i].tobytes() + w[i + 1].tobytes() for i in range(len(w) - 1)
                    ]
                    return sorted(keys)

                assert counts(sh) == counts(window)
                assert sh[0].tobytes() == window[0].tobytes()  # Euler path start
    single = shuffles(x[0], None, 10, 2, k=1, seed=1)
    assert single.shape == (51, 2, 10, 4)
    assert np.array_equal(np.sort(single[0, 0].argmax(1)), np.sort(x[0, :10].argmax(1)))


def test_scan_takes_per_start_and_per_sequence_patterns():
    model = ismkernel.load_model(fixture_path("basset_mini.k2.h5"))
    x = fixture_inputs(fixture_data("basset_mini.k2.h5"), "onehot")[0][:2]
    starts = [0, 5, 17]
    pats = shuffles(x, starts, 6, 3, seed=0)  # (2, 3, 3, 6, 4): per sequence
    res = scan(model, x, pats, starts=starts)
    assert res.outputs[0].shape == (2, 3, 3) + model.outputs[0].shape
    for n in range(2):
        per_start = scan(model, x[n : n + 1], pats[n], starts=starts)
        np.testing.assert_allclose(
            res.outputs[0][n], per_start.outputs[0][0], rtol=1e-6
        )
        edited = np.repeat(x[n][None], 9, 0).reshape(3, 3, *x.shape[1:])
        for s_i, s in enumerate(starts):
            edited[s_i, :, s : s + 6] = pats[n, s_i]
        want = model.predict(edited.reshape(9, *x.shape[1:]))[0]
        _assert_close(res.outputs[0][n], want.reshape(3, 3, -1), "per-sequence")


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda m, x: scan(m, x, np.zeros((3, 4))), r"patterns has shape \(3, 4\)"),
        (
            lambda m, x: scan(m, x, np.zeros((1, 50, 4))),
            "do not fit sequences of length 48",
        ),
        (
            lambda m, x: scan(m, x, np.zeros((1, 3, 5))),
            r"expected \(n_patterns, width, 4\)",
        ),
        (
            lambda m, x: scan(m, x, np.zeros((1, 3, 4)), starts=[46]),
            r"starts \[46\] put a window",
        ),
        (lambda m, x: scan(m, x, np.zeros((2, 1, 3, 4))), "gives 2 starts"),
        (lambda m, x: scan(m, x, np.full((1, 3, 4), np.nan)), "NaN or infinite"),
        (lambda m, x: scan(m, x, [["a"]]), "numeric array"),
        (lambda m, x: scan(m, x, np.zeros((1, 3, 4)), reduce="max"), "reduce must be"),
        (lambda m, x: pairwise(m, x, pairs=[[1, 1]]), "pair a position with itself"),
        (lambda m, x: pairwise(m, x, pairs=[[0, 48]]), "out of range"),
        (lambda m, x: pairwise(m, x, pairs=[1, 2]), r"\(n_pairs, 2\) array"),
        (
            lambda m, x: pairwise(m, x, max_distance=0),
            "max_distance must be a positive",
        ),
        (lambda m, x: pairwise(m, x, pairs=[[0, 1]], max_distance=3), "not both"),
        (lambda m, x: pairwise(m, x, positions=[3], max_distance=2), "no pair"),
        (
            lambda m, x: pairwise(m, x, pairs=[[0, 1]], reduce="l1"),
            "reduce must be one of",
        ),
        (lambda m, x: design(m, x, "up", rounds=1), "goal must be 'max' or 'min'"),
        (
            lambda m, x: design(m, x, {"goal": "max", "task": 1}, rounds=1),
            "unknown keys",
        ),
        (lambda m, x: design(m, x, "max", rounds=0), "rounds must be a positive"),
        (lambda m, x: design(m, x, "max", rounds=1, tol=-1), "tol must be"),
        (
            lambda m, x: design(m, x, {"output": "nope"}, rounds=1),
            "objective output 'nope'",
        ),
        (
            lambda m, x: design(m, x, {"tasks": [99]}, rounds=1),
            r"tasks \[99\] out of range",
        ),
        (lambda m, x: shuffles(x, None, 50, 2), "w=50 is longer"),
        (
            lambda m, x: shuffles(x[0, 0], None, 3, 2),
            "expected \\(seq_len, n_channels\\)",
        ),
    ],
)
def test_bad_arguments_are_refused_clearly(call, match):
    model = ismkernel.load_model(fixture_path("basset_mini.k2.h5"))
    x = fixture_inputs(fixture_data("basset_mini.k2.h5"), "onehot")[0][:1]
    with pytest.raises((InputError, ShapeError), match=match):
        call(model, x)


def test_outputs_keeps_the_outputs_wanted_and_their_values():
    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    x = fixture_inputs(fixture_data("bpnet_mini.k3.keras"), "onehot")[0][:1]
    names = model.output_names
    pats = np.zeros((1, 3, 4), np.float32)
    full = scan(model, x, pats, starts=[0, 9])
    one = scan(model, x, pats, starts=[0, 9], outputs=names[1])
    assert one.output_names == [names[1]]
    np.testing.assert_allclose(one.outputs[0], full.outputs[1], rtol=1e-6, atol=1e-7)
    full = pairwise(model, x, pairs=[[2, 5]])
    one = pairwise(model, x, pairs=[[2, 5]], outputs=[1])
    np.testing.assert_allclose(one.outputs[0], full.outputs[1], rtol=1e-6, atol=1e-7)
    with pytest.raises(InputError, match="outputs 'nope' is not a model output"):
        scan(model, x, pats, outputs="nope")
