"""The benchmark architectures of ``models.py`` built directly in the IR, with
seeded random weights, so a GPU machine with no Keras (and no network) can
time them. Batch norm is the ``ChannelAffine`` node the Keras importer makes
of it, with statistics away from the identity.

``tiny=True`` keeps each architecture's shape of graph (the same layers,
dilations, pools, heads) at a length and width a CPU runs in seconds.
"""

from __future__ import annotations

import numpy as np

from ismkernel.ir import Graph, Node
from ismkernel.ir import nodes as ops

__all__ = ["MODELS", "build"]


class _Builder:
    def __init__(self, name: str, seq_len: int, seed: int):
        self.g = Graph()
        self.rng = np.random.default_rng(seed)
        self.name = name
        self.x = self._add("dna", ops.Input((seq_len, 4)), [])
        self.g.inputs.append(self.x)

    def _add(self, name, op, inputs, **weights) -> str:
        self.g.add(Node(name, op, tuple(inputs), weights))
        return name

    def shape(self, name):
        return self.g.nodes[name].shape

    def conv(self, name, x, filters, width, dilation=1, padding="same", relu=False):
        cin = self.shape(x)[1]
        std = 1.0 / np.sqrt(width * cin)
        y = self._add(
            name,
            ops.Conv1D(filters, width, dilation=dilation, padding=padding),
            [x],
            kernel=self.rng.normal(0, std, (width, cin, filters)).astype(np.float32),
            bias=self.rng.normal(0, 0.1, filters).astype(np.float32),
        )
        return self.relu(f"{name}/activation", y) if relu else y

    def relu(self, name, x):
        return self._add(name, ops.Activation("relu"), [x])

    def bn(self, name, x):
        ch = self.shape(x)[-1]
        gamma = self.rng.uniform(0.5, 1.5, ch)
        beta = self.rng.normal(0, 0.1, ch)
        mean = self.rng.normal(0, 0.1, ch)
        var = self.rng.uniform(0.5, 1.5, ch)
        lead = (1,) * (len(self.shape(x)) - 1)  # broadcasts over the length
        scale = (gamma / np.sqrt(var + 1e-3)).astype(np.float32).reshape(lead + (ch,))
        shift = (beta - mean * scale).astype(np.float32).reshape(lead + (ch,))
        return self._add(name, ops.ChannelAffine(), [x], scale=scale, shift=shift)

    def pool(self, name, x, size):
        return self._add(name, ops.Pool1D("max", size, size), [x])

    def dense(self, name, x, units, act=None):
        n_in = int(np.prod(self.shape(x)))
        y = self._add(
            name,
            ops.Dense(units),
            [x],
            kernel=self.rng.normal(0, 1 / np.sqrt(n_in), (n_in, units)).astype(
                np.float32
            ),
            bias=self.rng.normal(0, 0.1, units).astype(np.float32),
        )
        return self._add(f"{name}/activation", ops.Activation(act), [y]) if act else y

    def finish(self, outputs) -> Graph:
        self.g.outputs = self.g.output_names = list(outputs)
        return self.g.finalize()


def _dense_head(b: _Builder, x, n_outputs, units):
    x = b._add("flatten", ops.Flatten(), [x])
    for i in range(2):
        x = b.dense(f"fc{i + 1}", x, units, act="relu")
        x = b.bn(f"bn_fc{i + 1}", x)
    return b.dense("fc3", x, n_outputs)


def basset(seq_len=1000, n_outputs=164, seed=0, tiny=False):
    b = _Builder("basset", seq_len, seed)
    x = b.x
    layers = [(300, 19, 3), (200, 11, 4), (200, 7, 4)]
    if tiny:
        layers = [(12, 7, 3), (8, 5, 2), (8, 3, 2)]
    for i, (filters, width, pool) in enumerate(layers):
        x = b.conv(f"conv{i + 1}", x, filters, width, relu=True)
        x = b.bn(f"bn{i + 1}", x)
        x = b.pool(f"pool{i + 1}", x, pool)
    return b.finish([_dense_head(b, x, n_outputs, 16 if tiny else 1000)])


def factorized_basset(seq_len=1000, n_outputs=10, seed=0, tiny=False):
    b = _Builder("factorized_basset", seq_len, seed)
    x = b.x
    blocks = [
        ([(48, 3), (64, 3), (100, 3), (150, 7), (300, 7)], 3),
        ([(200, 7), (200, 3), (200, 3)], 4),
        ([(200, 7)], 4),
    ]
    if tiny:
        blocks = [([(6, 3), (8, 3), (8, 7)], 3), ([(8, 7), (8, 3)], 2), ([(8, 7)], 2)]
    for i, (convs, pool) in enumerate(blocks):
        for c, (filters, width) in enumerate(convs):
            name = f"conv{i + 1}{'abcde'[c]}"
            x = b.conv(name, x, filters, width)
            x = b.bn(f"{name}_bn", x)
            x = b.relu(f"{name}_relu", x)
        x = b.pool(f"pool{i + 1}", x, pool)
    return b.finish([_dense_head(b, x, n_outputs, 16 if tiny else 1000)])


def bpnet(seq_len=1000, n_dilated=9, seed=0, tiny=False):
    b = _Builder("bpnet", seq_len, seed)
    ch = 8 if tiny else 64
    n_dilated = 4 if tiny else n_dilated
    x = b.conv("iconv", b.x, ch, 25, relu=True)
    for i in range(n_dilated):
        c = b.conv(f"rconv{i + 1}", x, ch, 3, dilation=2 ** (i + 1), relu=True)
        x = b._add(f"add{i + 1}", ops.Merge("add"), [c, x])
    profile = b.conv("profile", x, 2, 25)
    gap = b._add("gap", ops.GlobalPool1D("average"), [x])
    return b.finish([profile, b.dense("counts", gap, 2)])


def beluga(seq_len=2000, n_outputs=2002, seed=0, tiny=False):
    b = _Builder("beluga", seq_len, seed)
    x = b.x
    widths = [8, 12, 16] if tiny else [320, 480, 640]
    for i, filters in enumerate(widths):
        for c in range(2):
            x = b.conv(
                f"conv{i + 1}{'ab'[c]}", x, filters, 8, padding="valid", relu=True
            )
        if i < 2:
            x = b.pool(f"pool{i + 1}", x, 4)
    x = b._add("flatten", ops.Flatten(), [x])
    x = b.dense("fc1", x, 24 if tiny else 2003, act="relu")
    return b.finish([b.dense("fc2", x, 16 if tiny else n_outputs, act="sigmoid")])


#: Benchmark name -> (builder, full length, tiny length).
MODELS = {
    "basset-1000": (basset, 1000, 120),
    "factorized-basset-1000": (factorized_basset, 1000, 120),
    "bpnet-1000": (bpnet, 1000, 100),
    "beluga-2000": (beluga, 2000, 400),
}


def build(name: str, tiny: bool = False, seed: int = 0) -> Graph:
    """The IR graph of benchmark model ``name``."""
    fn, full, small = MODELS[name]
    return fn(seq_len=small if tiny else full, seed=seed, tiny=tiny)
