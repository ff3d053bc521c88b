"""Peers timed against ismkernel: fastISM (TensorFlow, Keras 2) and naive
batched ISM in PyTorch. Both need ``benchmarks/requirements.txt``.

Each ``time_*`` function returns seconds per sequence for full ISM (every
position, every alternative base) at the best batch size of a sweep, with the
whole sweep, timing a subset of positions where a full run would take long and
scaling by ``seq_len / n_positions`` (per-position cost is uniform away from
the ends; the subset spans the sequence, ends included).
"""

from __future__ import annotations

import os
import time

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def subset_positions(seq_len: int, n: int) -> np.ndarray:
    """``n`` positions spread over the sequence, both ends included."""
    return np.unique(np.linspace(0, seq_len - 1, n).round().astype(np.int64))


def _best(sweep: dict, **extra) -> dict:
    """The fastest batch size of a sweep of seconds per sequence."""
    best = min(sweep, key=sweep.get)
    return dict(seconds_per_seq=sweep[best], best_batch=best, sweep=sweep, **extra)


def time_fastism(keras_model, x: np.ndarray, batches, n_positions: int) -> dict:
    """fastISM 0.5.1: one call per alternative base (``replace_with``)."""
    import fastism

    seq_len = x.shape[1]
    pos = subset_positions(seq_len, n_positions)
    fism = fastism.FastISM(
        keras_model,
        change_ranges=[(int(p), int(p) + 1) for p in pos],
        test_correctness=False,
    )
    sweep = {}
    for b in batches:
        xb = np.resize(x, (b,) + x.shape[1:]).astype(np.float32)
        for base in range(4):  # warm: traces every graph once
            fism(xb[:2], replace_with=[float(v) for v in np.eye(4)[base]])
        t0 = time.perf_counter()
        for base in range(4):
            fism(xb, replace_with=[float(v) for v in np.eye(4)[base]])
        dt = time.perf_counter() - t0
        sweep[b] = dt / b * seq_len / len(pos)
    return _best(sweep, positions_timed=len(pos))


def torch_model(graph):
    """A PyTorch module computing ``graph`` (the benchmark models' ops)."""
    import torch

    from ismkernel.ir import conv_padding, pool_padding
    from ismkernel.ir import nodes as ops

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.params = {}
            for name, node in graph.nodes.items():
                for k, w in node.weights.items():
                    self.params[(name, k)] = torch.from_numpy(np.ascontiguousarray(w))

        def forward(self, x):  # x: (N, L, C) -> run channels-first inside
            vals = {graph.inputs[0]: x.transpose(1, 2)}
            for name, node in graph.nodes.items():
                if name in vals:
                    continue
                op = node.op
                xs = [vals[i] for i in node.inputs]
                w = lambda k, name=name: self.params[(name, k)]  # noqa: E731
                if isinstance(op, ops.Conv1D):
                    left, right, _ = conv_padding(
                        xs[0].shape[2],
                        op.kernel_size,
                        op.stride,
                        op.dilation,
                        op.padding,
                    )
                    y = torch.nn.functional.pad(xs[0], (left, right))
                    y = torch.nn.functional.conv1d(
                        y,
                        w("kernel").permute(2, 1, 0),
                        w("bias") if op.use_bias else None,
                        stride=op.stride,
                        dilation=op.dilation,
                        groups=op.groups,
                    )
                elif isinstance(op, ops.Pool1D):
                    left, right, _ = pool_padding(
                        xs[0].shape[2], op.pool_size, op.stride, op.padding
                    )
                    assert left == right == 0
                    fn = (
                        torch.nn.functional.max_pool1d
                        if op.mode == "max"
                        else torch.nn.functional.avg_pool1d
                    )
                    y = fn(xs[0], op.pool_size, op.stride)
                elif isinstance(op, ops.Activation):
                    y = {
                        "relu": torch.relu,
                        "sigmoid": torch.sigmoid,
                        "linear": lambda v: v,
                    }[op.fn](xs[0])
                elif isinstance(op, ops.ChannelAffine):
                    if xs[0].dim() == 3:
                        y = xs[0] * w("scale").reshape(-1, 1) + w("shift").reshape(
                            -1, 1
                        )
                    else:
                        y = xs[0] * w("scale") + w("shift")
                elif isinstance(op, ops.Merge) and op.mode == "add":
                    y = xs[0] + xs[1]
                elif isinstance(op, ops.Flatten):
                    y = xs[0].transpose(1, 2).reshape(xs[0].shape[0], -1)
                elif isinstance(op, ops.Dense):
                    y = xs[0] @ w("kernel") + w("bias")
                elif isinstance(op, ops.GlobalPool1D) and op.mode == "average":
                    y = xs[0].mean(dim=2)
                else:
                    raise NotImplementedError(op.describe())
                vals[name] = y
            outs = []
            for o in graph.outputs:
                y = vals[o]
                outs.append(y.transpose(1, 2) if y.dim() == 3 else y)
            return outs

    return Net().eval()


def torch_naive_ism(net, x: np.ndarray, positions: np.ndarray, batch: int) -> list:
    """Naive batched ISM in PyTorch, skipping the reference base."""
    import torch

    outs = None
    with torch.inference_mode():
        seqs, pos_i, alts = [], [], []
        for s in range(x.shape[0]):
            for p in positions:
                for a in range(4):
                    if x[s, p, a] != 1:
                        seqs.append(s), pos_i.append(p), alts.append(a)
        seqs, pos_i, alts = map(np.asarray, (seqs, pos_i, alts))
        for b0 in range(0, len(seqs), batch):
            sl = slice(b0, b0 + batch)
            xb = x[seqs[sl]].copy()
            xb[np.arange(len(xb)), pos_i[sl]] = np.eye(4, dtype=np.float32)[alts[sl]]
            ys = net(torch.from_numpy(xb))
            if outs is None:
                outs = [[] for _ in ys]
            for acc, y in zip(outs, ys):
                acc.append(y.numpy())
    return [np.concatenate(o) for o in outs], (seqs, pos_i, alts)


def time_torch(graph, x: np.ndarray, batches, n_positions: int) -> dict:
    import torch

    net = torch_model(graph)
    seq_len = x.shape[1]
    pos = subset_positions(seq_len, n_positions)
    sweep = {}
    for b in batches:
        torch_naive_ism(net, x[:1], pos[:2], b)  # warm
        t0 = time.perf_counter()
        torch_naive_ism(net, x, pos, b)
        sweep[b] = (time.perf_counter() - t0) / x.shape[0] * seq_len / len(pos)
    return _best(sweep, positions_timed=len(pos), threads=torch.get_num_threads())
