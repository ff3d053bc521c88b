"""Reducers and output selection, against their NumPy formulas on raw results."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ONNX_FIXTURES, fixture_inputs, fixture_path
from random_graphs import Builder

import ismkernel
from ismkernel.errors import InputError
from ismkernel.ir import nodes as ops
from ismkernel.ism import IsmRun
from ismkernel.model import Model
from ismkernel.reduce import (
    FIELDS,
    OutputAxes,
    ProfileRange,
    ScoreSink,
    check_profile_options,
    named_fields,
    reduce_profile,
    window_extreme,
)


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


def test_reducer_spellings_are_normalized_and_typos_named():
    """Case, ``_`` for ``-`` and American spelling give the same reducer; a
    typo is refused with the nearest name."""
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(2).integers(0, 4, (1, 20))]
    model = _profile_model()
    want = ismkernel.ism(model, x, reduce="mean-centred", backend="reference")
    got = ismkernel.ism(model, x, reduce="Mean_Centered", backend="reference")
    for a, b in zip(got.scores, want.scores):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(want.reduce("MEAN_CENTRED"), want.scores):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="did you mean 'delta'"):
        ismkernel.ism(model, x, reduce="dleta")
    with pytest.raises(InputError, match="reduce must be one of .* got 3"):
        want.reduce(3)


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


# Profile reducers: against loops written from their definitions.


def _loop_extreme(values, start, end, largest):
    """values (m, L, C): per mutant and channel, the first extreme over rows
    [start, end) and its row, by a Python loop."""
    m, _, c = values.shape
    val = np.full((m, c), np.nan, dtype=values.dtype)
    row = np.full((m, c), -1, dtype=np.int64)
    for i in range(m):
        for j in range(c):
            for r in range(start[i], end[i]):
                v = values[i, r, j]
                better = v > val[i, j] if largest else v < val[i, j]
                if row[i, j] < 0 or better:
                    val[i, j], row[i, j] = v, r
    return val, row


@pytest.mark.parametrize("largest", [True, False])
def test_window_extreme_takes_the_first_extreme_in_each_range(largest):
    rng = np.random.default_rng(5)
    # quarter steps: many ties, which the first row must win
    values = (rng.integers(-3, 4, (40, 17, 3)) / 4).astype(np.float32)
    start = rng.integers(0, 17, 40)
    end = np.minimum(start + rng.integers(0, 9, 40), 17)
    val, row = window_extreme(values, 1, start, end, largest=largest)
    want_val, want_row = _loop_extreme(values, start, end, largest)
    np.testing.assert_array_equal(row, want_row)
    np.testing.assert_array_equal(val, want_val)
    assert np.isnan(val[end <= start]).all() and (end <= start).any()


def test_window_extreme_propagates_nan_in_its_range_only():
    values = np.zeros((2, 6, 1), np.float32)
    values[:, 4] = np.nan
    values[:, 1] = 1.0
    val, row = window_extreme(values, 1, np.array([0, 0]), np.array([4, 6]))
    assert val[0, 0] == 1.0 and row[0, 0] == 1
    assert np.isnan(val[1, 0])


def _spliceai_loop(mut, ref, start, end, centre, acc=1, don=2):
    """SpliceAI's delta scores of one mutant, as its package forms them
    (``get_delta_scores``) on the rows [start, end) of the profiles ``(L,
    C)``, positions from row ``centre``."""
    y_ref, y_alt = ref[start:end], mut[start:end]
    idx_pa = (y_alt[:, acc] - y_ref[:, acc]).argmax()
    idx_na = (y_ref[:, acc] - y_alt[:, acc]).argmax()
    idx_pd = (y_alt[:, don] - y_ref[:, don]).argmax()
    idx_nd = (y_ref[:, don] - y_alt[:, don]).argmax()
    ds = [
        y_alt[idx_pa, acc] - y_ref[idx_pa, acc],
        y_ref[idx_na, acc] - y_alt[idx_na, acc],
        y_alt[idx_pd, don] - y_ref[idx_pd, don],
        y_ref[idx_nd, don] - y_alt[idx_nd, don],
    ]
    dp = [i + start - centre for i in (idx_pa, idx_na, idx_pd, idx_nd)]
    return np.array(ds + dp, dtype=np.float64)


@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("around", [None, 4])
def test_spliceai_delta_scores_follow_the_package_definition(channels_first, around):
    rng = np.random.default_rng(11)
    n, P, A, L, C, seq_len = 2, 5, 4, 21, 3, 31
    # softmax-like profiles with ties in the change
    ref = rng.dirichlet(np.ones(C), (n, L)).astype(np.float32)
    step = (rng.integers(-2, 3, (n, P, A, L, C)) / 64).astype(np.float32)
    mut = ref[:, None, None] + step
    positions = np.array([0, 3, 15, 27, 30])
    span = ProfileRange(around=around)
    start, end, origin = span.rows(positions, seq_len, L, "splice")
    if channels_first:
        axes = OutputAxes("splice", (C, L), 1, 0)
        delta = np.swapaxes(mut - ref[:, None, None], -1, -2)
    else:
        axes = OutputAxes("splice", (L, C), 0, 1)
        delta = mut - ref[:, None, None]
    at = (None, slice(None), None)
    got = reduce_profile(delta, "spliceai", axes, start[at], end[at], origin[at])
    assert got.shape == (n, P, A, 8)
    for i in range(n):
        for p in range(P):
            for a in range(A):
                if end[p] <= start[p]:
                    assert np.isnan(got[i, p, a]).all()
                    continue
                want = _spliceai_loop(mut[i, p, a], ref[i], start[p], end[p], origin[p])
                np.testing.assert_allclose(got[i, p, a], want, rtol=0, atol=1e-6)
    fields = named_fields("spliceai", got)
    assert list(fields) == list(FIELDS["spliceai"])
    np.testing.assert_array_equal(fields["DP_DL"], got[..., 7])


def test_profile_range_rows():
    pos = np.array([0, 10, 59])
    # output of 40 rows centred on an input of 60: row r is position r + 10
    start, end, origin = ProfileRange(around=2).rows(pos, 60, 40)
    np.testing.assert_array_equal(origin, [-10, 0, 49])
    np.testing.assert_array_equal(start, [0, 0, 40])
    np.testing.assert_array_equal(end, [0, 3, 40])
    start, end, origin = ProfileRange(over=(5, None)).rows(pos, 60, 40)
    np.testing.assert_array_equal(start, [5, 5, 5])
    np.testing.assert_array_equal(end, [40, 40, 40])
    np.testing.assert_array_equal(origin, [0, 0, 0])
    assert ProfileRange(around=2).hull(pos, 60, 40) == (0, 3)
    assert ProfileRange(around=2).hull([0], 60, 40) == (0, 0)
    assert ProfileRange.of("1:4").over == (1, 4)
    assert ProfileRange.of(around="7").around == 7


def test_max_and_min_keep_channels_and_report_rows():
    rng = np.random.default_rng(3)
    delta = rng.normal(size=(1, 2, 3, 12, 4)).astype(np.float32)
    axes = OutputAxes("p", (12, 4), 0, 1)
    start, end, origin = ProfileRange(over=(2, 9)).rows([0, 5], 12, 12)
    at = (None, slice(None), None)
    for kind, pick in (("max", np.max), ("min", np.min)):
        got = reduce_profile(
            delta, kind, axes, start[at], end[at], origin[at], tasks=[3, 1]
        )
        assert got.shape == (1, 2, 3, 2, 2)
        window = delta[..., 2:9, :][..., [3, 1]]
        np.testing.assert_array_equal(got[..., 0], pick(window, axis=-2))
        rows = (window.argmax if kind == "max" else window.argmin)(axis=-2) + 2
        np.testing.assert_array_equal(got[..., 1], rows)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: ProfileRange(over=(0, 5), around=3), "either over= .* not both"),
        (lambda: ProfileRange(around=-1), "around must be a number of rows >= 0"),
        (lambda: ProfileRange.of(around="ten"), "around must be a number of rows"),
        (
            lambda: ProfileRange(over=(0, 50)).rows([0], 100, 40, "prof"),
            "over 0:50 is out of range for output 'prof' of length 40",
        ),
        (
            lambda: ProfileRange(around=1).rows([0], 10, 40, "prof"),
            "output 'prof' has 40 rows for an input of 10; give over=START:END",
        ),
        (
            lambda: _reduce_toy("spliceai", tasks=[1]),
            "takes tasks=\\[acceptor, donor\\], two channel indices",
        ),
        (
            lambda: _reduce_toy("max", axes=OutputAxes("counts", (3,), None, 0)),
            "needs a profile output with a length axis; output 'counts'",
        ),
        (lambda: _reduce_toy("median"), "reduce must be one of"),
        (
            lambda: check_profile_options("max", (0, 4)),
            "sum_over would sum away; give its rows as over=START:END",
        ),
        (
            lambda: named_fields("spliceai", np.zeros((2, 3))),
            "do not end in the 8 fields of reduce='spliceai'",
        ),
    ],
)
def test_profile_reducer_errors(make, match):
    with pytest.raises(InputError, match=match):
        make()


def _reduce_toy(kind, tasks=None, axes=None):
    axes = axes or OutputAxes("toy", (6, 3), 0, 1)
    delta = np.zeros((1, 1, 1) + axes.shape, np.float32)
    z = np.zeros((1, 1, 1), np.int64)
    return reduce_profile(delta, kind, axes, z, z + 6, z, tasks=tasks)


@pytest.mark.parametrize(
    "kind,over,around",
    [
        ("max", None, None),
        ("min", "2:15", None),
        ("max", None, 3),
        ("spliceai", None, None),
        ("spliceai", "0:9", None),
    ],
)
def test_profile_reducers_as_chunks_finish_equal_those_of_the_outputs(
    backend, kind, over, around
):
    model = _profile_model()
    model = model.select_outputs(model.output_names[:1])  # the profile
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(6).integers(0, 4, (3, 20))]
    run = IsmRun(model, backend=backend, batch_size=5, positions=[0, 1, 9, 17, 19])
    kept = run(x)
    scored = run(x, reduce=kind, over=over, around=around, keep_outputs=False)
    assert scored.outputs is None
    want = kept.reduce(kind, outputs=0, over=over, around=around)[0]
    np.testing.assert_array_equal(scored.scores[0], want)
    np.testing.assert_array_equal(scored.score_reference[0], kept.reference[0])


def test_profile_reducers_in_ism_and_their_errors():
    model = _profile_model().select_outputs([_profile_model().output_names[0]])
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(2).integers(0, 4, (1, 20))]
    res = ismkernel.ism(model, x, reduce="max", over="2:15", positions=[4, 8])
    np.testing.assert_array_equal(res.scores[0], res.reduce("max", over="2:15")[0])
    (got,) = res.reduce("min", around=1, tasks=[0])
    # output rows are centred on the input: row r is position r + 1
    delta = res.outputs[0] - res.reference[0][:, None, None]
    for p, pos in enumerate([4, 8]):
        window = delta[0, p, :, pos - 2 : pos + 1, 0]
        np.testing.assert_array_equal(got[0, p, :, 0, 0], window.min(axis=1))
        np.testing.assert_array_equal(got[0, p, :, 0, 1], window.argmin(axis=1) - 1)
    with pytest.raises(InputError, match="sum_over would sum away"):
        res.reduce("max", sum_over="0:3")
    with pytest.raises(InputError, match="over= and around= choose the rows of"):
        ismkernel.ism(model, x, reduce="delta", around=3)
    with pytest.raises(InputError, match="reduce must be one of .*'spliceai'"):
        res.reduce("median")
    counts = _profile_model().select_outputs([_profile_model().output_names[1]])
    with pytest.raises(InputError, match="needs a profile output with a length axis"):
        ismkernel.ism(counts, x, reduce="spliceai", positions=[3])
    with pytest.raises(InputError, match="needs a profile output with a length axis"):
        IsmRun(counts, positions=[3])(x, reduce="max", keep_outputs=False)
    with pytest.raises(InputError, match="needs the mutated positions and sequence"):
        ScoreSink("max", counts.output_axes, lambda k, a, lead: a)
