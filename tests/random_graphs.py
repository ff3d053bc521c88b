"""Random small IR graphs of supported ops, for property tests.

Built directly in the IR (no Keras): each draw is a DAG of convolutions,
pooling, pointwise ops, merges, concatenation, crops, pads and upsampling on a
sequence input, ending in a spatial output, a Flatten -> Dense head or a
global pooling head.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from ismkernel.errors import ShapeError
from ismkernel.ir import Graph, Node
from ismkernel.ir import nodes as ops


class Builder:
    def __init__(self, seq_len: int, channels: int = 4, seed: int = 0):
        self.g = Graph()
        self.rng = np.random.default_rng(seed)
        self.n = 0
        x = self.add(ops.Input((seq_len, channels)), [])
        self.g.inputs.append(x)
        self.seq = x

    def add(self, op, inputs, **weights) -> str:
        self.n += 1
        name = f"{op.kind.lower()}_{self.n}"
        self.g.add(Node(name, op, tuple(inputs), weights))
        return name

    def w(self, *shape) -> np.ndarray:
        return self.rng.normal(0, 0.5, shape).astype(np.float32)

    def shape(self, name):
        return self.g.nodes[name].shape

    def conv(self, x, filters, k, stride=1, dilation=1, padding="same", groups=1):
        cin = self.shape(x)[1]
        return self.add(
            ops.Conv1D(filters, k, stride, dilation, padding, groups),
            [x],
            kernel=self.w(k, cin // groups, filters),
            bias=self.w(filters),
        )


LOCAL = [
    "chanpool",
    "conv",
    "conv",
    "pool",
    "act",
    "affine",
    "crop",
    "pad",
    "upsample",
    "dilate",
    "merge",
    "concat",
    "dense",
]


@st.composite
def random_models(draw, max_nodes: int = 7, spatial_only: bool = False):
    """(graph, kinds of the ops used) for a random supported model."""
    seq_len = draw(st.integers(6, 40))
    b = Builder(seq_len, seed=draw(st.integers(0, 2**31 - 1)))
    x = b.seq
    frontier = [x]
    for _ in range(draw(st.integers(1, max_nodes))):
        kind = draw(st.sampled_from(LOCAL))
        x = draw(st.sampled_from(frontier))
        length, ch = b.shape(x)
        try:
            if kind == "conv":
                k = draw(st.integers(1, 5))
                groups = draw(st.sampled_from([1, 2])) if ch % 2 == 0 else 1
                y = b.conv(
                    x,
                    draw(st.sampled_from([2, 4, 6])),
                    k,
                    stride=draw(st.sampled_from([1, 1, 2])),
                    dilation=draw(st.sampled_from([1, 1, 2, 3])),
                    padding=draw(
                        st.sampled_from(["same", "valid", "causal", (2, 0), (1, 3)])
                    ),
                    groups=groups,
                )
            elif kind == "pool":
                y = b.add(
                    ops.Pool1D(
                        draw(st.sampled_from(["max", "average"])),
                        draw(st.integers(1, 4)),
                        draw(st.integers(1, 3)),
                        draw(st.sampled_from(["valid", "same", (1, 0), (1, 2)])),
                    ),
                    [x],
                )
            elif kind == "act":
                fn = draw(
                    st.sampled_from(["relu", "tanh", "sigmoid", "elu", "softmax"])
                )
                y = b.add(ops.Activation(fn), [x])
            elif kind == "affine":
                y = b.add(ops.ChannelAffine(), [x], scale=b.w(ch), shift=b.w(ch))
            elif kind == "chanpool":  # a reduction over channels, per row
                mode = draw(st.sampled_from(["average", "max", "sum"]))
                y = b.add(ops.GlobalPool1D(mode, axis=1, keepdims=True), [x])
            elif kind == "dense":
                y = b.add(ops.Dense(3), [x], kernel=b.w(ch, 3), bias=b.w(3))
            elif kind == "crop":
                s, e = draw(st.integers(0, 3)), draw(st.integers(0, 3))
                y = b.add(ops.Crop1D(s, e), [x])
            elif kind == "pad":
                y = b.add(
                    ops.ZeroPad1D(draw(st.integers(0, 3)), draw(st.integers(0, 3))), [x]
                )
            elif kind == "upsample":
                y = b.add(ops.UpSample1D(draw(st.integers(1, 3))), [x])
            elif kind == "dilate":
                y = b.add(ops.ZeroInsert1D(draw(st.integers(1, 3))), [x])
            else:
                # a second branch of the same shape, then merge/concat
                other = b.conv(x, ch, draw(st.integers(1, 4)), padding="same")
                mode = draw(
                    st.sampled_from(
                        ["add", "multiply", "maximum", "subtract", "average", "divide"]
                    )
                )
                # A divisor in (0.5, 1.5): sigmoid + 0.5.
                fn = "sigmoid" if mode == "divide" else "relu"
                other = b.add(ops.Activation(fn), [other])
                if mode == "divide":
                    other = b.add(
                        ops.ChannelAffine(),
                        [other],
                        scale=np.ones(ch, np.float32),
                        shift=np.full(ch, 0.5, np.float32),
                    )
                if kind == "merge":
                    y = b.add(ops.Merge(mode), [x, other])
                else:
                    y = b.add(ops.Concatenate(1), [x, other])
        except ShapeError:
            continue
        frontier.append(y)
    out = frontier[-1]
    head = (
        "spatial"
        if spatial_only
        else draw(st.sampled_from(["spatial", "flatten", "gap", "gmp", "gsp"]))
    )
    outputs = [out]
    if head == "flatten":
        f = b.add(ops.Flatten(), [out])
        outputs = [
            b.add(ops.Dense(3), [f], kernel=b.w(np.prod(b.shape(out)), 3), bias=b.w(3))
        ]
    elif head in ("gap", "gmp", "gsp"):
        mode = {"gap": "average", "gmp": "max", "gsp": "sum"}[head]
        outputs = [b.add(ops.GlobalPool1D(mode), [out])]
        if draw(st.booleans()):
            outputs.append(out)  # a profile output beside the pooled one
    b.g.outputs = outputs
    b.g.output_names = list(outputs)
    return b.g.finalize()
