"""The cuda backend's code path, proven on the host: ``cuda-emulated`` equals
the ``cpu`` device bit for bit when both run the GPU's tactics, on every
fixture and on random graphs, early exit on and off; plus its selection,
memory sizing, precision and errors. (Its agreement with naive ISM under
those tactics is ``tests/test_cpu.py``'s, which runs on every registered
backend.) Tests that need a GPU are skipped with their reason."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import MODEL_FILES, fixture_data, fixture_inputs, fixture_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_graphs import random_models

import ismkernel
from ismkernel import errors
from ismkernel.backends import get_backend, resolve_backend
from ismkernel.backends.cuda import memory
from ismkernel.errors import BackendUnavailableError, InputError
from ismkernel.model import Model
from ismkernel.reduce import OutputSink

ALTS = np.vstack([np.eye(4), np.zeros(4), np.full(4, 0.25)]).astype(np.float32)
ONNX = Path(__file__).parent / "fixtures" / "onnx"


def _onnx_files() -> list[str]:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return []
    return sorted(json.loads((ONNX / "manifest.json").read_text()))


def _gpu_reason() -> str:
    ok, why = memory.probe()
    return "" if ok else f"needs a CUDA GPU: {why}"


def _plans(graph, feeds, positions=None, alternatives=None):
    """The plan lowered with the GPU's tactics, for ``cuda-emulated`` and (a
    copy) for the ``cpu`` device, which has the ``col2im`` tactic too."""
    seq_input = graph.inputs[0]
    for name, f in zip(graph.inputs, feeds):
        if f.shape[-1] == 4 and f.ndim == 3:
            seq_input = name
            break
    x = feeds[graph.inputs.index(seq_input)]
    if positions is None:
        positions = np.arange(x.shape[1])
    if alternatives is None:
        alternatives = np.eye(x.shape[-1], dtype=np.float32)
    plan = get_backend("cuda-emulated").plan(
        graph,
        seq_input,
        {n: f.shape[1:] for n, f in zip(graph.inputs, feeds)},
        np.asarray(positions, dtype=np.int64),
        alternatives=alternatives,
    )
    on_cpu = dataclasses.replace(plan, device="cpu", prepared={})
    return plan, on_cpu


def _run_both(graph, feeds, chunk, early_exit, positions=None, alternatives=None):
    plan, on_cpu = _plans(graph, feeds, positions, alternatives)
    sinks = []
    for name, p in (("cuda-emulated", plan), ("cpu", on_cpu)):
        sink = OutputSink()
        get_backend(name).run(p, feeds, sink, batch_size=chunk, early_exit=early_exit)
        sinks.append(sink)
    return sinks


def _assert_same_bits(a: OutputSink, b: OutputSink, what: str = ""):
    for x, y in zip(a.outputs + a.reference, b.outputs + b.reference):
        np.testing.assert_array_equal(x, y, err_msg=what, strict=True)


def _fixture_feeds(path, kind="onehot"):
    model = ismkernel.load_model(path)
    data = dict(np.load(str(path.parent / _npz(path))))
    xs = fixture_inputs(data, kind)
    return model, model.feeds(xs if len(xs) > 1 else xs[0], np.dtype(np.float32))


def _npz(path: Path) -> str:
    if path.parent == ONNX:
        return json.loads((ONNX / "manifest.json").read_text())[path.name]["npz"]
    from conftest import MANIFEST

    return MANIFEST[path.name]["npz"]


@pytest.mark.parametrize(
    "path",
    [fixture_path(n) for n in MODEL_FILES] + [ONNX / n for n in _onnx_files()],
    ids=lambda p: p.name,
)
@pytest.mark.parametrize("early_exit", [False, True])
def test_emulated_device_is_the_cpu_device_under_the_same_tactics(path, early_exit):
    model, feeds = _fixture_feeds(path, "onehot" if early_exit else "float")
    seq = model.graph.inputs[0]
    alts = ALTS if model.graph.nodes[seq].shape[-1] == 4 else None
    a, b = _run_both(model.graph, feeds, 7, early_exit, alternatives=alts)
    _assert_same_bits(a, b, path.name)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(random_models(), st.data())
def test_emulated_device_is_the_cpu_device_on_random_graphs(graph, data):
    seq_len = graph.nodes[graph.inputs[0]].shape[0]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    n = data.draw(st.integers(1, 3))
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (n, seq_len))]
    pos = data.draw(
        st.lists(st.integers(0, seq_len - 1), min_size=1, max_size=6, unique=True)
    )
    alts = ALTS[
        data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=4, unique=True))
    ]
    chunk = data.draw(st.sampled_from([None, 1, 5]))
    early_exit = data.draw(st.booleans())
    feeds = Model(graph).feeds(x, np.dtype(np.float32))
    a, b = _run_both(graph, feeds, chunk, early_exit, pos, alts)
    _assert_same_bits(a, b)


def test_gpu_tactics_take_every_delta_convolution_with_its_whole_epilogue():
    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    g = model.graph
    plan, _ = _plans(
        g, model.feeds(np.zeros((1,) + g.input_specs[0].shape), np.float32)
    )
    deltas = [p for p in plan.nodes.values() if p.strategy == "delta"]
    assert deltas and all(p.tactic == "col2im" for p in deltas)
    # the profile head too (few channels), and every residual add is fused
    fused = [p.epilogue for p in deltas if p.epilogue is not None]
    assert any(ep.residual for ep in fused) and any(ep.emit_change for ep in fused)
    assert {p.tactic for p in plan.nodes.values()} >= {"col2im", "lookup"}


def test_the_device_does_not_stop_early_and_computes_the_reference_exactly():
    """Early exit is off on the device (it would wait for the GPU at every
    check); computing on through an exactly-zero change gives the
    reference's outputs exactly."""
    from test_cpu import _dead_relu_model

    model = _dead_relu_model()
    x = np.eye(4, dtype=np.float32)[np.arange(40) % 4].reshape(2, 20, 4)
    assert get_backend("cuda-emulated").early_exit is False
    comp = ismkernel.ism(model, x, backend="cuda-emulated")
    ref = ismkernel.ism(model, x, backend="reference")
    assert comp.stats["n_early_exit"] == 0 and comp.stats["n_mutants"] > 0
    np.testing.assert_array_equal(comp.outputs[0], ref.outputs[0])
    stopped = ismkernel.ism(model, x, backend="cuda-emulated", early_exit=True)
    assert stopped.stats["n_early_exit"] == stopped.stats["n_mutants"]
    np.testing.assert_array_equal(stopped.outputs[0], ref.outputs[0])


def test_stats_name_the_device_and_precision_and_chunks_span_sequences():
    model = ismkernel.load_model(fixture_path("basset_mini.k3.keras"))
    x = fixture_inputs(fixture_data("basset_mini.k3.keras"), "onehot")[0]
    res = ismkernel.ism(model, x, backend="cuda-emulated", positions=[0, 5])
    assert res.backend == "cuda-emulated"
    assert res.stats["device"] == "emulated on the host"
    assert res.stats["precision"] == "float32"
    # one block of every sequence, one chunk of all their mutants
    assert res.stats["block_size"] == len(x)
    assert res.stats["chunk_size"] >= res.stats["n_mutants"] > 2 * 4


def test_precision_is_checked():
    model = ismkernel.load_model(fixture_path("basset_mini.k3.keras"))
    g = model.graph
    feeds = model.feeds(np.zeros((1,) + g.input_specs[0].shape), np.float32)
    plan, _ = _plans(g, feeds, [0])
    dev = get_backend("cuda-emulated")
    with pytest.raises(
        InputError, match=r"precision must be one of \('float32', 'tf32'\), got 'fp16'"
    ):
        dev.run(plan, feeds, OutputSink(), precision="fp16")
    with pytest.raises(
        InputError, match="precision='tf32' needs a GPU: NumPy's GEMM has no TF32"
    ):
        dev.run(plan, feeds, OutputSink(), precision="tf32")


def test_a_model_that_cannot_fit_says_how_many_bytes_it_needs():
    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    x = fixture_inputs(fixture_data("bpnet_mini.k3.keras"), "onehot")[0]
    with pytest.raises(
        errors.ResourceError,
        match=r"one sequence's reference activations \([\d,]+ bytes\) and one "
        r"mutant's tiles \([\d,]+ bytes with the next chunk's\) need [\d,]+ bytes "
        r"on the cuda-emulated device, but [\d,]+ are available within "
        "memory_budget; raise memory_budget",
    ):
        ismkernel.ism(model, x, backend="cuda-emulated", memory_budget=1000)


def test_outputs_that_cannot_fit_say_how_to_keep_less(monkeypatch):
    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    x = fixture_inputs(fixture_data("bpnet_mini.k3.keras"), "onehot")[0]
    dev = get_backend("cuda-emulated")
    monkeypatch.setattr(dev, "free_bytes", lambda: 100_000)
    with pytest.raises(
        errors.ResourceError,
        match=r"the outputs of \d+ sequences need [\d,]+ bytes on the cuda-emulated "
        r"device, which has [\d,-]+ usable; pass fewer sequences per call, or "
        r"keep only scores",
    ):
        ismkernel.ism(model, x, backend="cuda-emulated")


def test_cuda_without_a_gpu_says_why_and_auto_is_cpu(monkeypatch):
    if not _gpu_reason():
        pytest.skip("a GPU is present")
    with pytest.raises(
        BackendUnavailableError,
        match=r"backend 'cuda' needs a CUDA GPU reachable by CuPy and numba-cuda: "
        r".+; backend='cuda-emulated' runs the same code on the CPU",
    ):
        get_backend("cuda")
    assert resolve_backend("auto") == "cpu"
    monkeypatch.setattr(memory, "probe", lambda: (True, ""))
    assert resolve_backend("auto") == "cuda"


def test_the_probe_names_what_is_missing(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_cupy(name, *args, **kwargs):
        if name == "cupy":
            raise ImportError("no cupy")
        return real(name, *args, **kwargs)

    memory.probe.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_cupy)
    try:
        assert memory.probe() == (
            False,
            'CuPy is not installed (pip install "ismkernel[gpu]")',
        )
    finally:
        monkeypatch.undo()
        memory.probe.cache_clear()


# -- on a GPU -------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu():
    why = _gpu_reason()
    if why:
        pytest.skip(why)
    return get_backend("cuda")


@pytest.mark.gpu
def test_numpy_in_numpy_out_and_cupy_in_cupy_out_on_the_callers_stream(gpu):
    import cupy

    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    x = fixture_inputs(fixture_data("bpnet_mini.k3.keras"), "onehot")[0]
    feeds = model.feeds(x, np.dtype(np.float32))
    plan = gpu.plan(
        model.graph,
        model.graph.inputs[0],
        {model.graph.inputs[0]: feeds[0].shape[1:]},
        np.arange(feeds[0].shape[1]),
        alternatives=np.eye(4, dtype=np.float32),
    )
    host = OutputSink()
    gpu.run(plan, feeds, host)
    assert all(isinstance(a, np.ndarray) for a in host.outputs + host.reference)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        on_device = OutputSink()
        stats = gpu.run(plan, [cupy.asarray(f) for f in feeds], on_device)
        assert all(isinstance(a, cupy.ndarray) for a in on_device.outputs)
        assert cupy.cuda.get_current_stream() == stream
    stream.synchronize()
    cpu = ismkernel.ism(model, x, backend="cpu")
    for a, b in zip(host.outputs, cpu.outputs):
        scale = float(np.abs(b).max())
        assert float(np.abs(a - b).max()) <= 1e-5 * scale
    for a, b in zip(on_device.outputs, host.outputs):
        np.testing.assert_array_equal(cupy.asnumpy(a), b)  # one device, one order
    assert stats.as_dict()["precision"] == "float32"
    tf32 = gpu.run(plan, feeds, OutputSink(), precision="tf32")
    assert tf32.as_dict()["precision"] == "tf32"
