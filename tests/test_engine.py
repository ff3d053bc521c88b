"""One walker, many devices: the shared kernel names, the entry every backend
has, loud failures, and sinks that reduce where the arrays are."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture_data, fixture_inputs, fixture_path, incremental_backends
from random_graphs import Builder

import ismkernel
from ismkernel.backends import BACKENDS, KERNELS, get_backend
from ismkernel.errors import BackendUnavailableError, InputError, UnsupportedLayerError
from ismkernel.ir import nodes as ops
from ismkernel.ism import IsmRun
from ismkernel.model import Model
from ismkernel.plan import build_plan
from ismkernel.reduce import REDUCERS, OutputSink

PACKAGE = Path(ismkernel.__file__).parent


def _backend(name):
    try:
        return get_backend(name)
    except BackendUnavailableError as err:
        pytest.skip(str(err))


@pytest.mark.parametrize("name", incremental_backends())
def test_every_device_has_every_kernel_with_the_same_signature(name):
    table = _backend(name).kernels
    for kernel, params in KERNELS.items():
        fn = getattr(table, kernel, None)
        assert fn is not None, f"{name} lacks kernel {kernel}"
        assert tuple(inspect.signature(fn).parameters) == params, (name, kernel)


def test_the_walker_calls_only_shared_kernels_and_tactics():
    source = (PACKAGE / "backends" / "engine.py").read_text()
    called = set(__import__("re").findall(r"\.k\.(\w+)\(", source))
    assert called <= set(KERNELS), called - set(KERNELS)
    assert "numba" not in source and "config.CPU" not in source


def test_the_planner_pulls_in_no_device_tactic():
    code = (
        "import sys, ismkernel.plan.planner; "
        "print(sorted(m for m in sys.modules if m.startswith("
        "('ismkernel.backends.cpu', 'ismkernel.backends.cuda'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
    for path in (PACKAGE / "plan").glob("*.py"):
        assert "CPU_" not in path.read_text(), path.name


@dataclasses.dataclass(frozen=True)
class _Wobble(ops.Op):
    """A length-local op whose rule names a strategy no backend runs."""

    def shape(self, node, in_shapes):
        return tuple(in_shapes[0])

    def rule(self, node, in_shapes, out_shape):
        return "wobble", ""


def _graph_with(op):
    b = Builder(20)
    c = b.conv(b.seq, 4, 3)
    w = b.add(op, [c])
    b.g.outputs = b.g.output_names = [b.conv(w, 2, 3)]
    return b.g.finalize()


def test_a_rule_naming_an_unknown_strategy_fails_loudly():
    g = _graph_with(_Wobble())
    with pytest.raises(UnsupportedLayerError, match="strategy 'wobble'.*no backend"):
        build_plan(g, g.inputs[0], {g.inputs[0]: (20, 4)}, np.arange(20))


@pytest.mark.parametrize("name", incremental_backends())
def test_a_strategy_the_walker_has_no_rule_for_fails_loudly(name):
    g = _graph_with(ops.Activation("tanh"))
    model = Model(g)
    x = np.eye(4, dtype=np.float32)[np.zeros((1, 20), dtype=int)]
    _backend(name)
    run = IsmRun(model, backend=name)
    plan = run.plan_for(x)[3]
    tanh = next(n for n, node in g.nodes.items() if isinstance(node.op, ops.Activation))
    plan.nodes[tanh].strategy = "wobble"
    with pytest.raises(
        UnsupportedLayerError, match=f"'wobble' has no rule in the {name}"
    ):
        run(x)


def test_a_plan_runs_only_on_the_device_that_lowered_it():
    g = _graph_with(ops.Activation("tanh"))
    name = g.inputs[0]
    plan = get_backend("reference").plan(
        g, name, {name: (20, 4)}, np.arange(20), alternatives=np.eye(4)
    )
    x = np.zeros((1, 20, 4), np.float32)
    with pytest.raises(InputError, match="lowered for 'reference' cannot run on 'cpu'"):
        get_backend("cpu").run(plan, [x], OutputSink())


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_has_the_one_entry(name):
    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    x = fixture_inputs(fixture_data("bpnet_mini.k3.keras"), "onehot")[0]
    g = model.graph
    seq = g.inputs[0]
    backend = _backend(name)
    plan = backend.plan(
        g, seq, {seq: x.shape[1:]}, np.arange(x.shape[1]), alternatives=np.eye(4)
    )
    assert plan.device == name
    sink = OutputSink()
    backend.run(plan, [x], sink)
    want = ismkernel.ism(model, x, backend="reference")
    for a, b in zip(sink.outputs, want.outputs):
        scale = np.abs(b).max()
        assert np.abs(a - b).max() <= 1e-4 * scale


def test_the_plan_is_built_once_and_reused(plan_builds):
    model = ismkernel.load_model(fixture_path("bpnet_mini.k3.keras"))
    x = fixture_inputs(fixture_data("bpnet_mini.k3.keras"), "onehot")[0]
    run = IsmRun(model, positions=[0, 3, 9])
    first = run(x[:1])
    second = run(x[1:])
    assert len(plan_builds) == 1
    whole = ismkernel.ism(model, x, positions=[0, 3, 9])
    for k in range(len(whole.outputs)):
        np.testing.assert_array_equal(
            np.concatenate([first.outputs[k], second.outputs[k]]), whole.outputs[k]
        )


@pytest.mark.parametrize("kind", REDUCERS)
@pytest.mark.parametrize(
    "name,tasks,sum_over",
    [
        ("bpnet_mini.k3.keras", None, None),
        ("bpnet_mini.k3.keras", [1], "3:17"),
        ("basset_mini.k2.h5", [0, 2], None),
    ],
)
def test_scores_reduced_as_chunks_finish_equal_those_of_the_outputs(
    backend, kind, name, tasks, sum_over
):
    model = ismkernel.load_model(fixture_path(name))
    x = fixture_inputs(fixture_data(name), "float")[0]
    if kind == "log2fc":  # positive outputs: the model's, through softplus
        model = _softplus_outputs(model)
    if sum_over is not None:  # the profiles only
        model = model.select_outputs(
            [a.name for a in model.output_axes if a.length is not None]
        )
    run = IsmRun(model, backend=backend, batch_size=5)
    kept = run(x)
    scored = run(x, reduce=kind, tasks=tasks, sum_over=sum_over, keep_outputs=False)
    assert scored.outputs is None
    for k in range(len(kept.outputs)):
        want = kept.reduce(kind, outputs=[k], tasks=tasks, sum_over=sum_over)[0]
        np.testing.assert_array_equal(scored.scores[k], want)
        _, ref = kept.selected(k, tasks, sum_over)
        np.testing.assert_array_equal(scored.score_reference[k], ref)
    for a, b in zip(scored.reference, kept.reference):
        np.testing.assert_array_equal(a, b)


def _softplus_outputs(model: Model) -> Model:
    g = model.graph
    outs = []
    for k, name in enumerate(g.outputs):
        node = ops.Node(f"softplus_{k}", ops.Activation("softplus"), (name,))
        outs.append(g.add(node))
    g.outputs = outs
    return Model(g, output_perms=model.output_perms)


def test_scores_only_need_a_reducer():
    model = ismkernel.load_model(fixture_path("basset_mini.k2.h5"))
    x = fixture_inputs(fixture_data("basset_mini.k2.h5"), "onehot")[0]
    with pytest.raises(InputError, match="keep_outputs=False needs a reducer"):
        IsmRun(model)(x, keep_outputs=False)


class _DeviceArray:
    """Stands in for a GPU array: it has a CUDA array interface."""

    __cuda_array_interface__ = {"shape": (1, 48, 4), "typestr": "<f4", "version": 3}


def test_a_gpu_array_is_refused_by_a_host_backend():
    model = ismkernel.load_model(fixture_path("basset_mini.k2.h5"))
    with pytest.raises(InputError, match=r"x is a GPU array; this backend takes NumPy"):
        ismkernel.ism(model, _DeviceArray(), backend="cpu")


@pytest.mark.parametrize(
    "precision,backend,match",
    [
        ("tf32", "cpu", "precision='tf32' is a GPU GEMM mode: it needs backend='cuda'"),
        ("half", "cpu", "precision must be 'float32' or 'tf32', got 'half'"),
    ],
)
def test_precision_is_for_the_gpu(precision, backend, match):
    model = ismkernel.load_model(fixture_path("basset_mini.k2.h5"))
    x = fixture_inputs(fixture_data("basset_mini.k2.h5"), "onehot")[0]
    with pytest.raises(InputError, match=match):
        ismkernel.ism(model, x, backend=backend, precision=precision)
