"""Every incremental backend equals the reference backend: every fixture,
random DAGs, early exit on and off; and the cpu backend's own tactics."""

from __future__ import annotations

import contextlib
import dataclasses
from unittest import mock

import naive
import numpy as np
import pytest
from conftest import (
    MODEL_FILES,
    assert_same_ism,
    fixture_data,
    fixture_inputs,
    fixture_path,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_graphs import Builder, random_models

import ismkernel
from ismkernel import config
from ismkernel.errors import InputError
from ismkernel.ir import nodes as ops
from ismkernel.model import Model

ALTS = np.vstack([np.eye(4), np.zeros(4), np.full(4, 0.25)]).astype(np.float32)


@pytest.mark.parametrize("name", MODEL_FILES)
@pytest.mark.parametrize("kind", ["onehot", "float"])
def test_backend_equals_reference_on_every_fixture(backend, name, kind):
    _assert_fixture_is_reference(name, kind, backend)


@pytest.mark.parametrize("name", MODEL_FILES)
def test_without_early_exit_on_every_fixture(backend, name):
    _assert_fixture_is_reference(name, "onehot", backend, early_exit=False)


def _assert_fixture_is_reference(name, kind, backend="cpu", **options):
    model = ismkernel.load_model(fixture_path(name))
    xs = fixture_inputs(fixture_data(name), kind)
    x = xs if len(xs) > 1 else xs[0]
    alts = ALTS if model.inputs[0].shape[-1] == 4 else None
    ref = ismkernel.ism(model, x, backend="reference", alternatives=alts)
    # A small chunk size makes chunks split sequences and positions.
    comp = ismkernel.ism(
        model, x, backend=backend, alternatives=alts, batch_size=7, **options
    )
    assert comp.backend == backend
    assert_same_ism(ref, comp, name)


@settings(
    max_examples=220,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(random_models(), st.data())
def test_backend_equals_reference_on_random_graphs(backend, graph, data):
    model = Model(graph)
    seq_len = graph.nodes[graph.inputs[0]].shape[0]
    n = data.draw(st.integers(1, 3))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (n, seq_len))]
    pos = data.draw(
        st.lists(st.integers(0, seq_len - 1), min_size=1, max_size=6, unique=True)
    )
    alts = ALTS[
        data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=4, unique=True))
    ]
    chunk = data.draw(st.sampled_from([None, 1, 5]))
    early_exit = data.draw(st.booleans())
    ref = ismkernel.ism(model, x, backend="reference", positions=pos, alternatives=alts)
    comp = ismkernel.ism(
        model,
        x,
        backend=backend,
        positions=pos,
        alternatives=alts,
        batch_size=chunk,
        early_exit=early_exit,
    )
    assert_same_ism(ref, comp)


def _dead_relu_model():
    """Conv -> ReLU with a bias so negative that every change is clamped."""
    b = Builder(20)
    c = b.conv(b.seq, 3, 5)
    b.g.nodes[c].weights["bias"][:] = -100.0
    r = b.add(ops.Activation("relu"), [c])
    c2 = b.conv(r, 2, 3)
    out = b.add(ops.GlobalPool1D("average"), [c2])
    b.g.outputs = b.g.output_names = [out]
    return Model(b.g.finalize())


def test_exact_zero_changes_stop_early_and_copy_the_reference(backend):
    model = _dead_relu_model()
    x = np.eye(4, dtype=np.float32)[np.arange(40) % 4].reshape(2, 20, 4)
    comp = ismkernel.ism(model, x, backend=backend, early_exit=True)
    ref = ismkernel.ism(model, x, backend="reference")
    assert comp.stats["n_early_exit"] == comp.stats["n_mutants"] > 0
    np.testing.assert_array_equal(comp.outputs[0], ref.outputs[0])
    # computed on through the exactly-zero change: the reference exactly
    on = ismkernel.ism(model, x, backend=backend, early_exit=False)
    assert on.stats["n_early_exit"] == 0
    np.testing.assert_array_equal(on.outputs[0], ref.outputs[0])


def test_auto_is_cpu_and_reports_stats():
    model = ismkernel.load_model(fixture_path("basset_mini.k3.keras"))
    x = fixture_inputs(fixture_data("basset_mini.k3.keras"), "onehot")[0]
    res = ismkernel.ism(model, x, positions=[0, 5])
    from ismkernel.backends import resolve_backend

    assert res.backend == resolve_backend("auto")  # cpu, or cuda with a GPU
    assert res.stats["n_mutants"] + res.stats["n_copied"] == len(x) * 2 * 4
    assert res.stats["flops_plan"] < res.stats["flops_naive"]
    assert "(reference pass)" in res.stats["seconds"]
    assert set(res.stats["seconds"]) - {"(reference pass)"} <= set(model.graph.nodes)


def test_memory_budget_takes_what_the_command_line_takes():
    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    x = fixture_inputs(fixture_data("bpnet_mini.k3.keras"), "onehot")[0]
    a = ismkernel.ism(model, x, memory_budget="64M")
    b = ismkernel.ism(model, x, memory_budget=64 * 2**20)
    assert a.stats["chunk_size"] == b.stats["chunk_size"]
    for u, v in zip(a.outputs, b.outputs):
        np.testing.assert_array_equal(u, v)


def test_memory_budget_bounds_the_chunk():
    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    x = fixture_inputs(fixture_data("bpnet_mini.k3.keras"), "onehot")[0]
    small = ismkernel.ism(model, x, memory_budget=1)
    big = ismkernel.ism(model, x)
    assert small.stats["chunk_size"] < big.stats["chunk_size"]
    assert_same_ism(big, small)


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "1 gigabyte", "-2G"])
def test_bad_memory_budget(bad):
    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    x = fixture_inputs(fixture_data("bpnet_mini.k3.keras"), "onehot")[0]
    with pytest.raises(InputError, match="memory_budget"):
        ismkernel.ism(model, x, memory_budget=bad)


def test_float64_matches_reference():
    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    x = fixture_inputs(fixture_data("bpnet_mini.k3.keras"), "float")[0]
    ref = ismkernel.ism(model, x, backend="reference", dtype="float64")
    cpu = ismkernel.ism(model, x, backend="cpu", dtype="float64")
    assert cpu.outputs[0].dtype == np.float64
    for a, b in zip(ref.outputs, cpu.outputs):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n_ch", [2, 16])
@pytest.mark.parametrize("stride,dilation,left", [(1, 1, 2), (1, 4, 4), (2, 1, 1)])
def test_fused_kernels_equal_what_they_replace(n_ch, stride, dilation, left):
    from ismkernel.backends.cpu import kernels

    rng = np.random.default_rng(n_ch + dilation)
    length, n_mut, w_in, width, n_taps = 30, 9, 7, 6, 3
    ref = rng.standard_normal((2, length, n_ch)).astype(np.float32)
    seq = rng.integers(0, 2, n_mut)
    # windows reaching past both ends, where the reference counts as zero
    in_start = rng.integers(-3, length - w_in + 3, n_mut)
    tile = rng.standard_normal((n_mut, w_in, n_ch)).astype(np.float32)
    want = tile - kernels.gather(None, None, ref, seq, in_start, w_in)
    np.testing.assert_array_equal(kernels.change(tile, in_start, ref, seq), want)
    # a node kept as its change: the same sums, and the same exact-zero test
    np.testing.assert_array_equal(
        kernels.sum_rows(want), kernels.change_sum(tile, in_start, ref, seq)
    )
    inside = np.clip(in_start, 0, length - w_in)
    same = kernels.gather(None, None, ref, seq, inside, w_in)
    same[1::2] += rng.standard_normal(same[1::2].shape).astype(np.float32) > 1
    np.testing.assert_array_equal(
        kernels.all_zero(kernels.change(same, inside, ref, seq)),
        kernels.unchanged(same, inside, ref, seq),
    )
    np.testing.assert_allclose(
        kernels.change_sum(tile, in_start, ref, seq), want.sum(axis=1), rtol=1e-5
    )

    out_start = rng.integers(0, length - width + 1, n_mut)
    taps = rng.standard_normal((n_mut, w_in, n_taps, n_ch)).astype(np.float32)
    want = kernels.gather(None, None, ref, seq, out_start, width)
    naive.col2im_add(want, taps, in_start, out_start, left, stride, dilation)
    got = np.empty_like(want)
    kernels.col2im_ref(got, ref, seq, out_start, taps, in_start, left, stride, dilation)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # sums regrouped
    kernels.col2im_ref(
        got, ref, seq, out_start, taps, in_start, left, stride, dilation, relu=True
    )
    np.testing.assert_allclose(got, np.maximum(want, 0), rtol=1e-6, atol=1e-6)
    # without an activation the change is the products themselves
    chg = np.full_like(got, np.nan)
    kernels.col2im_ref(
        got, ref, seq, out_start, taps, in_start, left, stride, dilation, change=chg
    )
    products = np.zeros_like(want)
    naive.col2im_add(products, taps, in_start, out_start, left, stride, dilation)
    np.testing.assert_array_equal(chg, products)
    acc = rng.standard_normal((n_mut, width, n_ch)).astype(np.float32)
    want = acc + kernels.gather(tile, in_start, ref, seq, out_start, width)
    kernels.gather(tile, in_start, ref, seq, out_start, width, out=acc, add=True)
    np.testing.assert_array_equal(acc, want)


def test_relu_kernel_is_np_maximum():
    from ismkernel.backends.cpu import kernels

    special = [np.nan, -np.nan, -np.inf, np.inf, -0.0, 0.0, -1.5, 2.5, -1e-45]
    for dtype in (np.float32, np.float64):
        x = np.array(special * 3, dtype=dtype).reshape(3, -1)
        want = np.maximum(x, 0)
        got = kernels.relu(x.copy())
        np.testing.assert_array_equal(got, want)  # NaN where NaN, equal values
        strided = x.copy()[:, ::2]  # not contiguous: still in place
        assert kernels.relu(strided) is strided
        np.testing.assert_array_equal(strided, want[:, ::2])


def _conv_delta_loop(
    ref, seq, out_start, width, delta, kernel, in_start, left, dilation
):
    """The reference output window plus the stride-1 convolution of each
    mutant's change, one output row and tap at a time."""
    n_mut, w_in, _ = delta.shape
    out = np.empty((n_mut, width, kernel.shape[2]), dtype=np.float64)
    for m in range(n_mut):
        for o in range(width):
            row = out_start[m] + o
            acc = ref[seq[m], row].astype(np.float64)
            for k in range(kernel.shape[0]):
                j = row - left + k * dilation - in_start[m]
                if 0 <= j < w_in:
                    acc = acc + delta[m, j].astype(np.float64) @ kernel[k]
            out[m, o] = acc
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dilation,block", [(1, 4), (3, 5), (8, 128)])
def test_conv_per_tap_equals_a_loop(dtype, dilation, block):
    """The fused per-tap kernel (BLAS from Numba, blocks of rows) against a
    loop over output rows and taps, with each option of its epilogue, on
    windows clipped at both sequence ends and changed rows narrower than the
    input window."""
    from ismkernel.backends.cpu import kernels
    from ismkernel.plan.planner import per_tap_rows

    rng = np.random.default_rng(dilation)
    length, n_mut, n_taps, cin, cout = 40, 7, 3, 5, 9
    left = dilation  # "same" padding of a 3-tap kernel
    op = ops.Conv1D(n_filters=cout, kernel_size=n_taps, dilation=dilation)
    ref = rng.standard_normal((2, length, cout)).astype(dtype)
    res_ref = rng.standard_normal((2, length, cout)).astype(dtype)
    kernel = rng.standard_normal((n_taps, cin, cout)).astype(dtype)
    seq = rng.integers(0, 2, n_mut)
    w_in, width = 11, 11 + 2 * dilation
    in_start = np.array([0, 0, 3, 10, 29, 29, 15])  # first and last rows too
    out_start = np.clip(in_start - dilation, 0, length - width)
    # rows that can change: a sub-range of each input window
    lo = in_start + rng.integers(0, 4, n_mut)
    hi = in_start + w_in - rng.integers(0, 4, n_mut)
    delta = np.zeros((n_mut, w_in, cin), dtype=dtype)
    for m in range(n_mut):
        delta[m, lo[m] - in_start[m] : hi[m] - in_start[m]] = rng.standard_normal(
            (hi[m] - lo[m], cin)
        )
    rows = per_tap_rows(op, left, in_start, w_in, lo, hi, out_start, width)
    want = _conv_delta_loop(
        ref, seq, out_start, width, delta, kernel, in_start, left, dilation
    )
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12)

    def conv(out, **epilogue):
        return kernels.conv_per_tap(
            out, ref, seq, out_start, delta, kernel, rows, block, **epilogue
        )

    got = np.full((n_mut, width, cout), np.nan, dtype=dtype)
    conv(got)
    np.testing.assert_allclose(got, want, **tol)

    # ReLU, then a residual whose own window covers part of the output window
    res_start = out_start + 2
    res_tile = rng.standard_normal((n_mut, width - 4, cout)).astype(dtype)
    res = kernels.gather(res_tile, res_start, res_ref, seq, out_start, width)
    chg = np.full_like(got, np.nan)
    conv(
        got,
        relu=True,
        residual=(res_tile, res_start, res_ref, False),
        change=chg,
    )
    want = np.maximum(want, 0) + res
    np.testing.assert_allclose(got, want, **tol)
    # the change from the result's reference, relu(ref) plus the residual's
    result_ref = np.maximum(ref, 0) + res_ref
    np.testing.assert_allclose(
        chg, got - kernels.gather(None, None, result_ref, seq, out_start, width), **tol
    )
    # the residual given as its change, and the result's change written in
    # place of its values
    res_chg = res_tile - kernels.gather(None, None, res_ref, seq, res_start, width - 4)
    got_chg = np.full_like(got, np.nan)
    conv(
        got_chg,
        relu=True,
        residual=(res_chg, res_start, res_ref, True),
        change=got_chg,
    )
    np.testing.assert_allclose(got_chg, chg, **tol)
    # the change summed over rows as it is written: the additions of sum_rows
    sums = np.zeros((n_mut, cout), dtype=dtype)
    conv(
        got_chg,
        relu=True,
        residual=(res_chg, res_start, res_ref, True),
        change=got_chg,
        sums=sums,
    )
    np.testing.assert_array_equal(sums, kernels.sum_rows(got_chg))
    sums[:] = 0
    conv(got, relu=True, change=chg, sums=sums)
    np.testing.assert_array_equal(sums, kernels.sum_rows(chg))
    with pytest.raises(ValueError, match="change"):
        conv(got, sums=sums)
    # no ReLU, no residual: the change is the products alone
    plain = np.full_like(got, np.nan)
    conv(plain, change=plain)
    np.testing.assert_allclose(
        plain,
        _conv_delta_loop(
            ref, seq, out_start, width, delta, kernel, in_start, left, dilation
        )
        - kernels.gather(None, None, ref, seq, out_start, width),
        **tol,
    )
    # a residual with no tile: its reference only
    conv(got, relu=True, residual=(None, out_start, res_ref, False))
    res = kernels.gather(None, None, res_ref, seq, out_start, width)
    want = want - kernels.gather(res_tile, res_start, res_ref, seq, out_start, width)
    np.testing.assert_allclose(got, want + res, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
def test_conv_few_channels_equals_a_loop(dtype, relu):
    from ismkernel.backends.cpu import kernels

    rng = np.random.default_rng(5)
    length, n_mut, n_taps, cin, cout, dilation = 30, 6, 5, 7, 2, 2
    left = (n_taps - 1) * dilation // 2
    ref = rng.standard_normal((2, length, cout)).astype(dtype)
    kernel = rng.standard_normal((n_taps, cin, cout)).astype(dtype)
    mats = np.ascontiguousarray(kernel.transpose(1, 0, 2).reshape(cin, -1))
    seq = rng.integers(0, 2, n_mut)
    w_in, width = 9, 17
    in_start = np.array([0, 2, 8, 21, 21, 12])
    out_start = np.clip(in_start - 4, 0, length - width)
    # the rows that can change: a sub-range of each window (none for one)
    j0 = np.array([0, 3, 0, 2, 9, 4])
    j1 = np.array([9, 9, 5, 7, 9, 4])
    delta = rng.standard_normal((n_mut, w_in, cin)).astype(dtype)
    for m in range(n_mut):
        delta[m, : j0[m]] = delta[m, j1[m] :] = 0
    want = _conv_delta_loop(
        ref, seq, out_start, width, delta, kernel, in_start, left, dilation
    )
    if relu:
        want = np.maximum(want, 0)
    delta[:, 0] = np.where((j0 > 0)[:, None], np.nan, delta[:, 0])  # never read
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12)
    for block in (2, 4, 256):  # GEMMs of a few rows each, or one
        got = np.full((n_mut, width, cout), np.nan, dtype=dtype)
        kernels.conv_few_channels(
            got,
            ref,
            seq,
            out_start,
            delta,
            mats,
            in_start,
            (j0, j1),
            left,
            dilation,
            relu,
            block=block,
        )
        np.testing.assert_allclose(got, want, **tol)


@contextlib.contextmanager
def _per_tap_everywhere():
    """Every stride-1 delta convolution runs one GEMM per tap."""
    with (
        mock.patch.object(config, "CPU_PER_TAP_MIN_ROWS", 0),
        mock.patch.object(config, "CPU_FEW_CHANNELS", 1),
    ):
        yield


@pytest.mark.parametrize("name", MODEL_FILES)
def test_per_tap_convolutions_equal_reference(name):
    with _per_tap_everywhere():
        _assert_fixture_is_reference(name, "float")


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(random_models(), st.data())
def test_per_tap_convolutions_on_random_graphs(graph, data):
    model = Model(graph)
    seq_len = graph.nodes[graph.inputs[0]].shape[0]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (2, seq_len))]
    pos = data.draw(
        st.lists(st.integers(0, seq_len - 1), min_size=1, max_size=6, unique=True)
    )
    ref = ismkernel.ism(model, x, backend="reference", positions=pos)
    with _per_tap_everywhere():
        cpu = ismkernel.ism(model, x, backend="cpu", positions=pos, batch_size=3)
    assert_same_ism(ref, cpu)


def _cpu_plan(graph, seq_len):
    from ismkernel.backends import get_backend

    name = graph.inputs[0]
    return get_backend("cpu").plan(
        graph, name, {name: (seq_len, 4)}, np.arange(seq_len), alternatives=np.eye(4)
    )


def test_per_tap_flops_count_the_changed_products_landing_in_the_window():
    b = Builder(40)
    c1 = b.conv(b.seq, 4, 5)
    c2 = b.conv(c1, 3, 3, dilation=8)
    b.g.outputs = b.g.output_names = [c2]
    graph = b.g.finalize()
    with _per_tap_everywhere():
        plan = _cpu_plan(graph, 40)
    src, p = plan.nodes[c1], plan.nodes[c2]
    assert (p.strategy, p.tactic) == ("delta", "per-tap")
    counts = []
    for i in range(40):  # brute force: (input row, tap) pairs landing in the window
        n = 0
        for j in range(src.lo[i] - src.start[i], src.hi[i] - src.start[i]):
            for k in range(3):
                o = src.start[i] + j + 1 * 8 - k * 8  # same padding: left = 8
                n += p.start[i] <= o < p.start[i] + p.width
        counts.append(n)
    assert p.flops_plan == pytest.approx(2 * np.mean(counts) * 4 * 3)


def test_few_channel_flops_count_the_changed_rows():
    b = Builder(40)
    c1 = b.conv(b.seq, 4, 5)
    c2 = b.conv(c1, 2, 7, dilation=3)
    b.g.outputs = b.g.output_names = [c2]
    graph = b.g.finalize()
    plan = _cpu_plan(graph, 40)
    src, p = plan.nodes[c1], plan.nodes[c2]
    assert (p.strategy, p.tactic) == ("delta", "few-channels")
    rows = [  # brute force: window rows a mutation at i can change
        sum(src.lo[i] <= src.start[i] + j < src.hi[i] for j in range(src.width))
        for i in range(40)
    ]
    assert p.flops_plan == pytest.approx(2 * np.mean(rows) * 7 * 4 * 2)


def _bpnet_mini_plan():
    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    g = model.graph
    return g, _cpu_plan(g, g.input_specs[0].shape[0])


def test_convolutions_apply_the_relu_that_follows_them():
    g, plan = _bpnet_mini_plan()
    fused = {n: p.epilogue for n, p in plan.nodes.items() if p.epilogue is not None}
    relus = {n for n, ep in fused.items() if ep.relu}
    assert relus
    for conv in relus:
        (after,) = g.consumers()[conv]
        assert fused[conv].relu_node == after
        assert plan.nodes[after].fused_into == conv
    # and its profile head (few output channels) lays its products out rows
    # last (kernels.conv_few_channels), with no epilogue beyond a ReLU
    heads = [p for p in plan.nodes.values() if p.tactic == "few-channels"]
    assert heads
    assert all(not (p.epilogue.emit_change or p.epilogue.residual) for p in heads)
    # (its ISM equals the reference's: test_cpu_equals_reference_on_every_fixture)


def test_per_tap_convolutions_write_residual_adds_and_changes():
    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    g = model.graph
    with _per_tap_everywhere():
        plan = _cpu_plan(g, g.input_specs[0].shape[0])
    fused = {n: p.epilogue for n, p in plan.nodes.items() if p.epilogue is not None}
    # every dilated residual block's add is written by its convolution, where
    # that runs per tap (the last one recomputes its window)
    adds = {
        n
        for n, node in g.nodes.items()
        if isinstance(node.op, ops.Merge)
        and any(
            plan.nodes[g.nodes[i].inputs[0]].tactic == "per-tap"
            for i in node.inputs
            if i.endswith("/activation")
        )
    }
    written = {ep.add_node for ep in fused.values() if ep.add_node}
    assert len(adds) == 3 and written == adds
    for conv, ep in fused.items():
        if ep.residual is None:
            continue
        add = g.nodes[ep.result]
        assert ep.result == ep.add_node
        assert ep.residual in add.inputs and ep.relu_node in add.inputs
        assert plan.nodes[ep.add_node].fused_into == conv
    # and each add that a delta convolution reads next has its change too
    emitting = {c for c, ep in fused.items() if ep.emit_change}
    assert emitting == {
        c
        for c, ep in fused.items()
        if ep.add_node
        and any(plan.nodes[r].strategy == "delta" for r in g.consumers()[ep.result])
    }
    assert emitting
    # adds nothing reads but fused convolutions are kept as their change alone
    assert {ep.result for ep in fused.values() if not ep.keep_values} == {
        "add1",
        "add2",
    }
    # (its ISM equals the reference's: test_per_tap_convolutions_equal_reference)


def _run_with(model, x, edit):
    """ISM on the cpu backend after ``edit(plan)`` changed its records."""
    from ismkernel.ism import IsmRun

    run = IsmRun(model, backend="cpu")
    edit(run.plan_for(x)[3])
    return run(x)


def test_a_node_kept_as_its_change_reads_back_as_its_values():
    """Any other reader of a node kept as its change gets reference plus
    change: here a window convolution and an add read one."""
    name = "bpnet_mini.k3.keras"
    model = ismkernel.load_model(fixture_path(name))
    x = fixture_inputs(fixture_data(name), "float")[0]

    def keep_add3_as_change(plan):
        ep = plan.nodes["rconv3"].epilogue
        assert ep.result == "add3" and ep.keep_values
        plan.nodes["rconv3"].epilogue = dataclasses.replace(
            ep, emit_change=True, keep_values=False
        )

    ref = ismkernel.ism(model, x, backend="reference")
    with _per_tap_everywhere():
        cpu = _run_with(model, x, keep_add3_as_change)
    assert_same_ism(ref, cpu)


def _residual_heads_model(seq_len=30):
    """A first convolution, two dilated residual blocks, then a profile head
    and a global average (BPNet's shape, no crop)."""
    b = Builder(seq_len)
    x = b.add(ops.Activation("relu"), [b.conv(b.seq, 8, 5)])
    for d in (2, 4):
        r = b.add(ops.Activation("relu"), [b.conv(x, 8, 3, dilation=d)])
        x = b.add(ops.Merge("add"), [r, x])
    profile = b.conv(x, 2, 5)
    counts = b.add(ops.GlobalPool1D("average"), [x])
    b.g.outputs = b.g.output_names = [profile, counts]
    return Model(b.g.finalize()), x


def test_a_global_average_reads_the_sums_its_convolution_wrote():
    """The last residual add, read by a profile head and a global average,
    has its change summed by its convolution as it is written: the ISM is
    the reference's, and the same bits as with the sums done afterwards."""
    model, last_add = _residual_heads_model()
    x = np.random.default_rng(3).normal(size=(2, 30, 4)).astype(np.float32)
    seen = []

    def record(plan):
        seen.append(
            {
                p.epilogue.result
                for p in plan.nodes.values()
                if p.epilogue and p.epilogue.row_sums
            }
        )

    def no_sums(plan):
        for p in plan.nodes.values():
            if p.epilogue is not None:
                p.epilogue = dataclasses.replace(p.epilogue, row_sums=False)

    ref = ismkernel.ism(model, x, backend="reference")
    with _per_tap_everywhere():
        fused = _run_with(model, x, record)
        plain = _run_with(model, x, no_sums)
    assert seen[0] == {last_add}
    assert_same_ism(ref, fused)
    for a, b in zip(fused.outputs, plain.outputs):
        np.testing.assert_array_equal(a, b)  # the same additions


def test_results_do_not_depend_on_threads():
    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    x = fixture_inputs(fixture_data("bpnet_mini.k3.keras"), "float")[0]
    runs = [ismkernel.ism(model, x, threads=t, batch_size=5) for t in (1, 2, 3)]
    for run in runs[1:]:
        for a, b in zip(runs[0].outputs, run.outputs):
            np.testing.assert_array_equal(a, b)
    default = [ismkernel.ism(model, x, threads=t) for t in (1, 3)]
    assert_same_ism(default[0], default[1])


@pytest.mark.parametrize("bad", [0, -1, 2.5, "4"])
def test_bad_threads(bad):
    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    x = fixture_inputs(fixture_data("bpnet_mini.k3.keras"), "onehot")[0]
    with pytest.raises(InputError, match="threads"):
        ismkernel.ism(model, x, threads=bad)
