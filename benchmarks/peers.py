"""Peers timed against ismkernel: fastISM (TensorFlow, Keras 2), naive
batched ISM in PyTorch, and the reference backend's naive ISM. They need
``benchmarks/requirements.txt``.

Each ``time_*`` function returns seconds per sequence for full ISM (every
position, every alternative base) at the best batch size of a sweep, with the
whole sweep. A peer is timed on the positions it is given (every 4th, or
all: ``every_nth``) and scaled by ``seq_len / n_positions``; its cost per
position is uniform away from the ends. Timing a handful of positions and
scaling by 100 multiplied fastISM's fixed cost per call (the reference pass
of each batch, its Python) a hundredfold; with every 4th position that cost
is spread over as many positions as one quarter of a real run.
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


def every_nth(seq_len: int, n: int) -> np.ndarray:
    """Every ``n``-th position from the first (all of them for ``n = 1``)."""
    return np.arange(0, seq_len, n, dtype=np.int64)


def _best(sweep: dict, **extra) -> dict:
    """The fastest batch size of a sweep of seconds per sequence."""
    best = min(sweep, key=sweep.get)
    return dict(seconds_per_seq=sweep[best], best_batch=best, sweep=sweep, **extra)


def time_fastism(keras_model, x: np.ndarray, batches, positions) -> dict:
    """fastISM 0.5.1: one call per alternative base (``replace_with``) on
    ``b`` sequences at every position in ``positions``, for each batch size
    ``b`` of ``batches`` (``x`` is repeated up to ``b`` sequences)."""
    import fastism

    seq_len = x.shape[1]
    pos = np.asarray(positions)
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
    return _best(sweep, positions_timed=len(pos), sequences_per_call="batch")


def time_reference(model, x: np.ndarray, batches, positions) -> dict:
    """ismkernel's reference backend (naive ISM, dense NumPy) on ``x`` at
    ``positions``, for each batch size (mutants per forward pass)."""
    import ismkernel

    seq_len = x.shape[1]
    pos = np.asarray(positions)
    sweep = {}
    for b in batches:
        ismkernel.ism(
            model, x[:1], positions=pos[:2], backend="reference", batch_size=b
        )
        t0 = time.perf_counter()
        ismkernel.ism(model, x, positions=pos, backend="reference", batch_size=b)
        sweep[b] = (time.perf_counter() - t0) / x.shape[0] * seq_len / len(pos)
    return _best(sweep, positions_timed=len(pos), n_seqs=x.shape[0])


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
                elif isinstance(op, ops.ZeroInsert1D):
                    n, c, length = xs[0].shape
                    y = xs[0].new_zeros((n, c, (length - 1) * op.stride + 1))
                    y[:, :, :: op.stride] = xs[0]
                elif isinstance(op, ops.Crop1D):
                    y = xs[0][:, :, op.start : xs[0].shape[2] - op.end]
                elif isinstance(op, ops.ZeroPad1D):
                    y = torch.nn.functional.pad(xs[0], (op.left, op.right))
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


def check_torch(net, model, x: np.ndarray) -> float:
    """Max |PyTorch - Model.predict| over max |output|: the module computes
    the model's graph (stops the benchmark otherwise)."""
    import torch

    with torch.inference_mode():
        ys = net(torch.from_numpy(x))
    err = 0.0
    for y, z in zip(ys, model.predict(x)):
        err = max(err, float(np.abs(y.numpy() - z).max() / max(np.abs(z).max(), 1e-30)))
    if not err <= 1e-4:
        raise SystemExit(f"the PyTorch module differs from Model.predict by {err:.2e}")
    return err


def time_torch(model, x: np.ndarray, batches, positions) -> dict:
    """Naive batched ISM in PyTorch on ``x`` at ``positions``, for each batch
    size (mutants per forward pass), after checking the module against
    ``Model.predict``."""
    import torch

    net = torch_model(model.graph)
    err = check_torch(net, model, x)
    seq_len = x.shape[1]
    pos = np.asarray(positions)
    sweep = {}
    for b in batches:
        torch_naive_ism(net, x[:1], pos[:2], b)  # warm
        t0 = time.perf_counter()
        torch_naive_ism(net, x, pos, b)
        sweep[b] = (time.perf_counter() - t0) / x.shape[0] * seq_len / len(pos)
    return _best(
        sweep,
        positions_timed=len(pos),
        n_seqs=x.shape[0],
        threads=torch.get_num_threads(),
        check_rel_err=err,
    )
