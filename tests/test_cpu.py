"""The cpu backend equals the reference backend: every fixture, random DAGs."""

from __future__ import annotations

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
from ismkernel.errors import InputError
from ismkernel.ir import nodes as ops
from ismkernel.model import Model

ALTS = np.vstack([np.eye(4), np.zeros(4), np.full(4, 0.25)]).astype(np.float32)


@pytest.mark.parametrize("name", MODEL_FILES)
@pytest.mark.parametrize("kind", ["onehot", "float"])
def test_cpu_equals_reference_on_every_fixture(name, kind):
    model = ismkernel.load_model(fixture_path(name))
    xs = fixture_inputs(fixture_data(name), kind)
    x = xs if len(xs) > 1 else xs[0]
    alts = ALTS if model.inputs[0].shape[-1] == 4 else None
    ref = ismkernel.ism(model, x, backend="reference", alternatives=alts)
    # A small chunk size makes chunks split sequences and positions.
    cpu = ismkernel.ism(model, x, backend="cpu", alternatives=alts, batch_size=7)
    assert cpu.backend == "cpu"
    assert_same_ism(ref, cpu, name)


@settings(
    max_examples=220,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(random_models(), st.data())
def test_cpu_equals_reference_on_random_graphs(graph, data):
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
    ref = ismkernel.ism(model, x, backend="reference", positions=pos, alternatives=alts)
    cpu = ismkernel.ism(
        model, x, backend="cpu", positions=pos, alternatives=alts, batch_size=chunk
    )
    assert_same_ism(ref, cpu)


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


def test_exact_zero_changes_stop_early_and_copy_the_reference():
    model = _dead_relu_model()
    x = np.eye(4, dtype=np.float32)[np.arange(40) % 4].reshape(2, 20, 4)
    cpu = ismkernel.ism(model, x, backend="cpu")
    ref = ismkernel.ism(model, x, backend="reference")
    assert cpu.stats["n_early_exit"] == cpu.stats["n_mutants"] > 0
    np.testing.assert_array_equal(cpu.outputs[0], ref.outputs[0])


def test_auto_is_cpu_and_reports_stats():
    model = ismkernel.load_model(fixture_path("basset_mini.k3.keras"))
    x = fixture_inputs(fixture_data("basset_mini.k3.keras"), "onehot")[0]
    res = ismkernel.ism(model, x, positions=[0, 5])
    assert res.backend == "cpu"
    assert res.stats["n_mutants"] + res.stats["n_copied"] == len(x) * 2 * 4
    assert res.stats["flops_plan"] < res.stats["flops_naive"]
    assert "(reference pass)" in res.stats["seconds"]
    assert set(res.stats["seconds"]) - {"(reference pass)"} <= set(model.graph.nodes)


def test_memory_budget_bounds_the_chunk():
    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    x = fixture_inputs(fixture_data("bpnet_mini.k3.keras"), "onehot")[0]
    small = ismkernel.ism(model, x, memory_budget=1)
    big = ismkernel.ism(model, x)
    assert small.stats["chunk_size"] < big.stats["chunk_size"]
    assert_same_ism(big, small)


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "1GB"])
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
