"""The planner against brute force, and its strategies and report."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fixture_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_graphs import Builder, random_models

import ismkernel
from ismkernel.backends import reference
from ismkernel.cli import main
from ismkernel.ir import nodes as ops
from ismkernel.plan import build_plan
from ismkernel.plan.intervals import window_forward


def changed_rows(graph, x, pos, alt):
    """Per node, the rows whose values differ after mutating row ``pos``."""
    xm = x.copy()
    xm[0, pos] = alt
    a = reference.evaluate(graph, [x.astype(np.float64)])
    b = reference.evaluate(graph, [xm.astype(np.float64)])
    out = {}
    for name in graph.nodes:
        if a[name].ndim == 3:
            out[name] = np.flatnonzero(np.any(a[name][0] != b[name][0], axis=-1))
    return out


def plan_and_truth(graph, data):
    seq_len = graph.nodes[graph.inputs[0]].shape[0]
    positions = np.array(
        data.draw(
            st.lists(st.integers(0, seq_len - 1), min_size=1, max_size=4, unique=True)
        )
    )
    plan = build_plan(
        graph, graph.inputs[0], {graph.inputs[0]: (seq_len, 4)}, positions
    )
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (1, seq_len))]
    return plan, x, positions


_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_SETTINGS
@given(random_models(), st.data())
def test_planned_windows_cover_every_change(graph, data):
    plan, x, positions = plan_and_truth(graph, data)
    for j, pos in enumerate(positions):
        alt = np.roll(x[0, pos], 1)
        truth = changed_rows(graph, x, pos, alt)
        for name, p in plan.nodes.items():
            if p.kind not in ("row", "tile"):
                continue
            nlo, nhi = p.need
            rows = truth[name]
            rows = rows[(rows >= nlo) & (rows < nhi)]
            if len(rows):
                assert p.lo[j] <= rows.min() and rows.max() < p.hi[j], (name, pos)
                s = p.start[j]
                assert s <= rows.min() and rows.max() < s + p.width, (name, pos)


@st.composite
def conv_pool_chains(draw):
    """Chains of convolutions, average pooling, crops, pads and strictly
    monotone activations: every row in a planned window does change."""
    seq_len = draw(st.integers(10, 48))
    b = Builder(seq_len, seed=draw(st.integers(0, 2**31 - 1)))
    x = b.seq
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "pool", "tanh", "crop", "pad"]))
        length = b.shape(x)[0]
        if kind == "conv":
            k = draw(st.integers(1, 5))
            d = draw(st.sampled_from([1, 2, 3]))
            pad = draw(st.sampled_from(["same", "valid", "causal"]))
            if pad == "valid" and (k - 1) * d + 1 > length:
                continue
            x = b.conv(
                x,
                draw(st.sampled_from([3, 5])),
                k,
                draw(st.sampled_from([1, 2])),
                d,
                pad,
            )
        elif kind == "pool":
            size = draw(st.integers(1, 3))
            if size > length:
                continue
            x = b.add(
                ops.Pool1D(
                    "average",
                    size,
                    draw(st.integers(1, 3)),
                    draw(st.sampled_from(["valid", "same"])),
                ),
                [x],
            )
        elif kind == "tanh":
            x = b.add(ops.Activation("tanh"), [x])
        elif kind == "crop" and length > 4:
            x = b.add(ops.Crop1D(draw(st.integers(0, 2)), draw(st.integers(0, 2))), [x])
        elif kind == "pad":
            x = b.add(
                ops.ZeroPad1D(draw(st.integers(0, 2)), draw(st.integers(0, 2))), [x]
            )
    b.g.outputs = b.g.output_names = [x]
    return b.g.finalize()


@_SETTINGS
@given(conv_pool_chains(), st.data())
def test_planned_windows_are_tight_on_conv_pool_chains(graph, data):
    plan, x, positions = plan_and_truth(graph, data)
    for j, pos in enumerate(positions):
        truth = changed_rows(graph, x, pos, np.roll(x[0, pos], 1))
        # An interval is the tightest description of a set without gaps; a
        # dilated kernel can leave gaps, after which only the cover holds.
        contiguous = True
        for name, p in plan.nodes.items():
            if p.kind not in ("row", "tile"):
                continue
            nlo, nhi = p.need
            rows = truth[name]
            if len(rows) and len(rows) != rows.max() - rows.min() + 1:
                contiguous = False
            rows = rows[(rows >= nlo) & (rows < nhi)]
            got = (int(p.lo[j]), int(p.hi[j]))
            want = (int(rows.min()), int(rows.max()) + 1) if len(rows) else None
            if want is not None:
                assert got[0] <= want[0] and want[1] <= got[1], (name, pos, got, want)
            if not contiguous:
                continue
            if want is None:
                assert got[0] >= got[1], (name, pos, got)
            else:
                assert got == want, (name, pos, got, want)


def _readers(row, **window):
    lo, hi = window_forward(np.array([row]), np.array([row + 1]), out_len=20, **window)
    return int(lo[0]), int(hi[0])


def test_dilated_and_strided_taps_that_step_over_a_narrow_interval():
    # kernel 2, dilation 4: row 10 is read by outputs 6 and 10 only.
    assert _readers(10, kernel_size=2, stride=1, dilation=4, left=0) == (6, 11)
    # kernel 2, stride 3: outputs read rows (0, 1), (3, 4), ...; none reads 11.
    assert _readers(11, kernel_size=2, stride=3, dilation=1, left=0) == (0, 0)
    # 'same' padding shifts the taps: with left 1, row 0 is read by outputs 0, 1.
    assert _readers(0, kernel_size=3, stride=1, dilation=1, left=1) == (0, 2)


def _plan(path, length=None):
    model = ismkernel.load_model(fixture_path(path))
    g = model.graph
    seq_len = length or model.inputs[0].shape[0]
    return build_plan(g, g.inputs[0], {g.inputs[0]: (seq_len, 4)}, np.arange(seq_len))


def test_basset_plan_strategies():
    plan = _plan("basset_mini.k3.keras")
    strategies = {p.strategy for p in plan.nodes.values()}
    assert {
        "row",
        "lookup",
        "pool",
        "pointwise",
        "virtual",
        "flatten-dense",
    } <= strategies
    assert plan.flops_plan < plan.flops_naive and plan.ceiling > 1
    assert plan.peak_bytes_per_mutant() > 0


def test_a_crop_shrinks_what_is_computed():
    plan = _plan("bpnet_mini.k3.keras")
    crop = next(
        n for n, p in plan.nodes.items() if plan.graph.nodes[n].op.kind == "Crop1D"
    )
    src = plan.graph.nodes[crop].inputs[0]
    op = plan.graph.nodes[crop].op
    length = plan.shapes[src][0]
    assert plan.nodes[src].need == (op.start, length - op.end)


def test_softmax_over_length_switches_to_dense_with_a_reason():
    b = Builder(12)
    c = b.conv(b.seq, 3, 3)
    s = b.add(ops.Activation("softmax", axis=0), [c])
    d = b.conv(s, 2, 3)
    b.g.outputs = b.g.output_names = [d]
    g = b.g.finalize()
    plan = build_plan(g, g.inputs[0], {g.inputs[0]: (12, 4)}, np.arange(12))
    assert plan.nodes[s].kind == "full" and "length axis" in plan.nodes[s].reason
    assert plan.nodes[d].kind == "full"
    assert "Computed in full" in plan.describe()


def test_inspect_prints_the_plan(capsys):
    assert (
        main(["inspect", str(fixture_path("basset_mini.k2.h5")), "--length", "48"]) == 0
    )
    out = capsys.readouterr().out
    for text in [
        "strategy",
        "lookup",
        "flatten-dense",
        "ceiling speedup",
        "MFLOP naive",
    ]:
        assert text in out


def test_inspect_length_a_flatten_cannot_take(capsys):
    assert (
        main(["inspect", str(fixture_path("basset_mini.k2.h5")), "--length", "60"]) == 2
    )
    assert "layer 'dense_9' (Dense)" in capsys.readouterr().err


def test_output_rows_shrink_the_plan_and_leave_nan_outside():
    """A summed range of a profile output: the planner computes only what
    those rows need, the values there equal a full run's, the rest is NaN."""
    from conftest import ONNX_FIXTURES

    import ismkernel

    model = ismkernel.load_model(ONNX_FIXTURES / "bpnet.onnx")
    x = np.load(ONNX_FIXTURES / "bpnet.npz")["x_onehot_0"][:2]
    full = ismkernel.ism(model, x, batch_size=50)
    part = ismkernel.ism(model, x, batch_size=50, output_rows={"slice_1": (20, 30)})
    assert part.stats["flops_plan"] < full.stats["flops_plan"]
    # Output 0 is (2, 48) in PyTorch's layout: length is its last axis.
    np.testing.assert_allclose(
        part.outputs[0][..., 20:30], full.outputs[0][..., 20:30], rtol=1e-5, atol=1e-6
    )
    assert np.isnan(part.outputs[0][..., :20]).all()
    assert np.isnan(part.outputs[0][..., 30:]).all()
    # 'view' is (1,): not a profile, so (0, 0) is refused.
    with pytest.raises(Exception, match="has no length axis"):
        ismkernel.ism(model, x, output_rows={"view": (0, 0)})
    np.testing.assert_array_equal(part.reference[0], full.reference[0])
