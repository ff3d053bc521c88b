"""The IR: graph construction, shape inference and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from ismkernel import ShapeError
from ismkernel.ir import Graph, Node, infer_shape
from ismkernel.ir import nodes as ops


def _node(op, weights=None, name="n"):
    return Node(name, op, ("x",), weights or {}, layer=name, layer_class=op.kind)


def _w(*shape):
    return np.zeros(shape, np.float32)


def test_graph_add_checks_names_and_order():
    graph = Graph()
    graph.add(Node("x", ops.Input((10, 4))))
    with pytest.raises(ShapeError, match="duplicate node name 'x' in the graph"):
        graph.add(Node("x", ops.Input((10, 4))))
    with pytest.raises(
        ShapeError,
        match=r"layer 'y' \(Flatten\) reads 'ghost', which is not defined before it",
    ):
        graph.add(
            Node("y", ops.Flatten(), ("ghost",), layer="y", layer_class="Flatten")
        )


def test_finalize_prunes_and_infers():
    graph = Graph()
    graph.add(Node("x", ops.Input((10, 4))))
    graph.add(Node("unused", ops.Flatten(), ("x",)))
    graph.add(Node("crop", ops.Crop1D(1, 2), ("x",)))
    graph.inputs, graph.outputs, graph.output_names = ["x"], ["crop"], ["crop"]
    graph.finalize()
    assert list(graph.nodes) == ["x", "crop"]
    assert graph.output_specs[0].shape == (7, 4)
    assert graph.consumers() == {"x": ["crop"], "crop": []}


@pytest.mark.parametrize(
    "op,weights,in_shapes,message",
    [
        (
            ops.Conv1D(3, 2),
            {"kernel": _w(2, 4, 3)},
            [(40,)],
            r"layer 'n' \(Conv1D\) expects a \(seq_len, n_channels\) input of rank 2 per sample, got shape \(40,\)",
        ),
        (
            ops.Conv1D(3, 2),
            {"kernel": _w(2, 5, 3)},
            [(10, 4)],
            r"kernel has shape \(2, 5, 3\) but an input of 4 channels needs \(2, 4, 3\)",
        ),
        (
            ops.Conv1D(3, 2, groups=3),
            {"kernel": _w(2, 1, 3)},
            [(10, 4)],
            r"4 input channels do not split into 3 groups",
        ),
        (
            ops.Conv1D(3, 5, dilation=4),
            {"kernel": _w(5, 4, 3)},
            [(10, 4)],
            r"input length 10 is shorter than the kernel span 17",
        ),
        (
            ops.Pool1D("max", 12, 12),
            {},
            [(10, 4)],
            r"input length 10 is shorter than pool size 12",
        ),
        (
            ops.Crop1D(5, 5),
            {},
            [(10, 4)],
            r"cropping \(5, 5\) leaves nothing of length 10",
        ),
        (
            ops.Activation("softmax", axis=3),
            {},
            [(10, 4)],
            r"axis 3 out of range for shape \(10, 4\)",
        ),
        (
            ops.PReLU(),
            {"alpha": _w(3, 4)},
            [(10, 4)],
            r"weight 'alpha' of shape \(3, 4\) does not fit an input of shape \(10, 4\)",
        ),
        (
            ops.ChannelAffine(),
            {"scale": _w(1, 5), "shift": _w(1, 5)},
            [(10, 4)],
            r"weight 'scale' of shape \(1, 5\) does not fit",
        ),
        (
            ops.LayerNorm(1e-3),
            {"gamma": _w(5), "beta": _w(4)},
            [(10, 4)],
            r"weight 'gamma' has shape \(5,\) but an input of shape \(10, 4\) needs \(4,\)",
        ),
        (ops.Merge("add"), {}, [(10, 4)], r"needs at least 2 inputs, got 1"),
        (
            ops.Merge("maximum"),
            {},
            [(10, 4), (10, 3)],
            r"inputs of shapes \[\(10, 4\), \(10, 3\)\] cannot be merged",
        ),
        (ops.Merge("add"), {}, [(10, 4), (4,)], r"cannot be merged"),
        (
            ops.Concatenate(2),
            {},
            [(10, 4), (10, 4)],
            r"cannot concatenate shapes .* on axis 2",
        ),
        (
            ops.Concatenate(1),
            {},
            [(10, 4), (9, 4)],
            r"cannot concatenate shapes \[\(10, 4\), \(9, 4\)\] on axis 1",
        ),
        (
            ops.Flatten(),
            {},
            [(None, 4)],
            r"layer 'n' \(Flatten\) needs a fixed input shape, got \(None, 4\)",
        ),
        (ops.Reshape((4, 10)), {}, [(None, 4)], r"needs a fixed input shape"),
        (
            ops.Dense(3),
            {"kernel": _w(4, 3)},
            [()],
            r"needs an input of rank >= 1, got a scalar",
        ),
        (
            ops.Dense(3),
            {"kernel": _w(5, 3)},
            [(10, 4)],
            r"kernel has shape \(5, 3\) but an input with last axis 4 needs \(4, 3\)",
        ),
    ],
)
def test_shape_errors_name_the_layer(op, weights, in_shapes, message):
    with pytest.raises(ShapeError, match=message):
        infer_shape(_node(op, weights), in_shapes)


@pytest.mark.parametrize(
    "op,weights,in_shapes,out",
    [
        (ops.Merge("multiply"), {}, [(10, 4), (10, 1)], (10, 4)),
        (ops.Merge("add"), {}, [(None, 4), (10, 4)], (10, 4)),
        (
            ops.Conv1D(3, 4, 2, 1, "same"),
            {"kernel": _w(4, 4, 3)},
            [(None, 4)],
            (None, 3),
        ),
        (ops.Concatenate(0), {}, [(None, 4), (10, 4)], (None, 4)),
        (ops.GlobalPool1D("max", axis=0, keepdims=True), {}, [(10, 4)], (1, 4)),
        (ops.GlobalPool1D("average", axis=1), {}, [(10, 4)], (10,)),
        (ops.UpSample1D(3), {}, [(10, 4)], (30, 4)),
        (ops.ZeroInsert1D(3), {}, [(10, 4)], (28, 4)),
        (ops.ZeroInsert1D(2), {}, [(None, 4)], (None, 4)),
        (ops.ZeroPad1D(1, 2), {}, [(10, 4)], (13, 4)),
        (ops.PReLU(), {"alpha": _w(1, 4)}, [(10, 4)], (10, 4)),
    ],
)
def test_shapes(op, weights, in_shapes, out):
    assert infer_shape(_node(op, weights), in_shapes) == out


def test_describe_shows_non_default_attributes():
    assert ops.Conv1D(8, 3).describe() == "Conv1D(n_filters=8, kernel_size=3)"
    assert (
        ops.Pool1D("max", 2, 2, "same").describe()
        == "Pool1D(mode='max', pool_size=2, stride=2, padding='same')"
    )
    assert ops.Conv1D(8, 3, use_bias=False).weight_names == ("kernel",)
    assert ops.LayerNorm(1e-3, center=False).weight_names == ("gamma",)
