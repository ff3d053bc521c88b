"""The reference backend: a dense NumPy forward pass and naive ISM.

This is the executable specification every other backend is tested against.
Each op is written the plain way, in the order of TensorFlow's arithmetic
where that is cheap to follow (batch norm, merges), so it matches Keras to
float32 rounding. Nothing here is incremental.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence

import numpy as np

from ismkernel import config
from ismkernel.backends.engine import Backend, RunStats
from ismkernel.ir import Graph, Node, conv_padding, pool_padding
from ismkernel.ir import nodes as ops

__all__ = [
    "forward",
    "evaluate",
    "apply",
    "merge",
    "naive_ism",
    "ReferenceBackend",
    "unchanged_rows",
    "default_batch_size",
    "apply_activation",
]

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_erf_ufunc = None


def _xp(x):
    """The array module of ``x``: every op computes with its input's module,
    so the cuda device runs them on device arrays (NumPy's calls, and so its
    results, are unchanged)."""
    if type(x).__module__.startswith("cupy"):
        return sys.modules["cupy"]
    return np


def _erf(x: np.ndarray) -> np.ndarray:
    if _xp(x) is not np:
        from cupyx.scipy.special import erf

        return erf(x)
    # NumPy has no erf; a Numba ufunc over math.erf is exact to the libm value.
    global _erf_ufunc
    if _erf_ufunc is None:
        import numba

        @numba.vectorize(["float32(float32)", "float64(float64)"], cache=False)
        def erf(v):
            return math.erf(v)

        _erf_ufunc = erf
    return _erf_ufunc(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    xp = _xp(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _relu(x: np.ndarray, op: ops.Activation) -> np.ndarray:
    # Keras's relu(x, negative_slope, max_value, threshold), step for step.
    xp = _xp(x)
    slope, max_value, threshold = op.negative_slope, op.max_value, op.threshold
    if slope != 0 and max_value is None and threshold == 0:
        return xp.where(x > 0, x, x * x.dtype.type(slope))
    zero = x.dtype.type(0)
    if slope != 0:
        negative = xp.maximum(x.dtype.type(threshold) - x, zero)
    if threshold != 0:
        y = xp.where(x > threshold, x, zero)
    else:
        y = xp.maximum(x, zero)
    if max_value is not None:
        y = xp.clip(y, zero, x.dtype.type(max_value))
    if slope != 0:
        y = y - x.dtype.type(slope) * negative
    return y


def apply_activation(op: ops.Activation, x: np.ndarray) -> np.ndarray:
    """Apply a pointwise activation to ``x`` (any shape, float dtype)."""
    t = x.dtype.type
    xp = _xp(x)
    fn = op.fn
    if fn == "linear":
        return x
    if fn == "relu":
        return _relu(x, op)
    if fn == "elu":
        neg = xp.expm1(xp.minimum(x, t(0)))
        return xp.where(x > 0, x, neg if op.alpha == 1 else t(op.alpha) * neg)
    if fn == "selu":
        return t(_SELU_SCALE) * xp.where(
            x > 0, x, t(_SELU_ALPHA) * xp.expm1(xp.minimum(x, t(0)))
        )
    if fn == "gelu":
        if op.approximate:
            inner = t(math.sqrt(2 / math.pi)) * (x + t(0.044715) * x**3)
            return t(0.5) * x * (t(1) + xp.tanh(inner))
        return t(0.5) * x * (t(1) + _erf(x / t(math.sqrt(2))))
    if fn == "erf":
        return _erf(x)
    if fn == "log":
        return xp.log(x)
    if fn == "abs":
        return xp.abs(x)
    if fn == "sqrt":
        return xp.sqrt(x)
    if fn == "clip":
        return xp.clip(x, t(op.threshold), t(op.max_value))
    if fn == "reciprocal":
        return x.dtype.type(1) / x
    if fn in ("hard_sigmoid", "hard_silu"):
        if op.alpha == 1 / 6:  # Keras 3: relu6(x + 3) / 6
            h = xp.clip(x + t(3), t(0), t(6)) / t(6)
        else:  # Keras 2: clip(0.2 x + 0.5, 0, 1)
            h = xp.clip(x * t(op.alpha) + t(0.5), t(0), t(1))
        return h if fn == "hard_sigmoid" else x * h
    if fn == "sigmoid":
        return _sigmoid(x)
    if fn == "tanh":
        return xp.tanh(x)
    if fn == "softplus":
        return xp.logaddexp(t(0), x)
    if fn == "softsign":
        return x / (t(1) + xp.abs(x))
    if fn == "exponential":
        return xp.exp(x)
    if fn == "silu":
        return x * _sigmoid(x)
    if fn == "mish":
        return x * xp.tanh(xp.logaddexp(t(0), x))
    if fn == "celu":
        return xp.maximum(x, t(0)) + t(op.alpha) * xp.expm1(
            xp.minimum(x, t(0)) / t(op.alpha)
        )
    if fn == "hard_tanh":
        return xp.clip(x, t(-1), t(1))
    if fn == "log_sigmoid":
        return -xp.logaddexp(t(0), -x)
    if fn == "tanh_shrink":
        return x - xp.tanh(x)
    if fn == "hard_shrink":
        return xp.where(xp.abs(x) > op.threshold, x, t(0))
    if fn == "soft_shrink":
        th = t(op.threshold)
        return xp.where(x > th, x - th, xp.where(x < -th, x + th, t(0)))
    if fn == "sparse_plus":
        return xp.where(x <= -1, t(0), xp.where(x < 1, t(0.25) * (x + t(1)) ** 2, x))
    if fn == "sparse_sigmoid":
        return xp.where(x <= -1, t(0), xp.where(x >= 1, t(1), t(0.5) * (x + t(1))))
    if fn == "squareplus":
        return (x + xp.sqrt(x * x + t(op.alpha))) / t(2)
    if fn in ("softmax", "log_softmax"):
        axis = op.axis + 1 if op.axis >= 0 else op.axis  # per sample -> batch
        shifted = x - xp.max(x, axis=axis, keepdims=True)
        e = xp.exp(shifted)
        total = xp.sum(e, axis=axis, keepdims=True)
        return e / total if fn == "softmax" else shifted - xp.log(total)
    raise ValueError(f"unknown activation {fn!r}")


def _taps(x_pad: np.ndarray, start: int, count: int, step: int) -> np.ndarray:
    """Rows ``start, start + step, ...`` (``count`` of them) along axis 1."""
    return x_pad[:, start : start + (count - 1) * step + 1 : step]


def _conv1d(node: Node, xs: list[np.ndarray]) -> np.ndarray:
    op: ops.Conv1D = node.op
    x = xs[0]
    xp = _xp(x)
    n_seqs, seq_len, n_channels = x.shape
    left, right, out_len = conv_padding(
        seq_len, op.kernel_size, op.stride, op.dilation, op.padding
    )
    x_pad = xp.pad(x, ((0, 0), (left, right), (0, 0)))
    span = (op.kernel_size - 1) * op.dilation + 1
    # windows[n, o, c, k] = x_pad[n, o * stride + k * dilation, c]
    windows = xp.lib.stride_tricks.sliding_window_view(x_pad, span, axis=1)[
        :, : (out_len - 1) * op.stride + 1 : op.stride, :, :: op.dilation
    ]
    kernel = node.weights["kernel"].astype(x.dtype, copy=False)
    cg = n_channels // op.groups
    fg = op.n_filters // op.groups
    out = xp.empty((n_seqs, out_len, op.n_filters), dtype=x.dtype)
    # One GEMM over all taps (im2col), in batch chunks that bound the unfolded
    # copy to the budget.
    depth = cg * op.kernel_size
    chunk = max(1, config.IM2COL_BYTES // max(1, out_len * depth * x.dtype.itemsize))
    for g in range(op.groups):
        cols_g = windows[:, :, g * cg : (g + 1) * cg, :]
        w_g = kernel[:, :, g * fg : (g + 1) * fg].transpose(1, 0, 2).reshape(depth, fg)
        for start in range(0, n_seqs, chunk):
            cols = cols_g[start : start + chunk].reshape(-1, depth)
            out[start : start + chunk, :, g * fg : (g + 1) * fg] = (cols @ w_g).reshape(
                -1, out_len, fg
            )
    if op.use_bias:
        out += node.weights["bias"].astype(x.dtype, copy=False)
    return out


def _pool1d(node: Node, xs: list[np.ndarray]) -> np.ndarray:
    op: ops.Pool1D = node.op
    x = xs[0]
    xp = _xp(x)
    left, right, out_len = pool_padding(x.shape[1], op.pool_size, op.stride, op.padding)
    if op.mode == "max":
        x_pad = xp.pad(x, ((0, 0), (left, right), (0, 0)), constant_values=-np.inf)
        out = _taps(x_pad, 0, out_len, op.stride)
        for j in range(1, op.pool_size):
            out = xp.maximum(out, _taps(x_pad, j, out_len, op.stride))
        return out
    x_pad = xp.pad(x, ((0, 0), (left, right), (0, 0)))
    valid = xp.pad(xp.ones(x.shape[1], dtype=x.dtype), (left, right))[None, :, None]
    total = _taps(x_pad, 0, out_len, op.stride)
    count = _taps(valid, 0, out_len, op.stride)
    for j in range(1, op.pool_size):
        total = total + _taps(x_pad, j, out_len, op.stride)
        count = count + _taps(valid, j, out_len, op.stride)
    return total / count


_MERGE_UFUNCS = {
    "add": "add",
    "average": "add",
    "subtract": "subtract",
    "multiply": "multiply",
    "divide": "divide",
    "maximum": "maximum",
    "minimum": "minimum",
}


def merge(mode: str, xs: list[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """Element-wise merge of ``xs``, left to right (``out`` if given)."""
    xp = _xp(xs[0])
    ufunc = getattr(xp, _MERGE_UFUNCS[mode])
    out = ufunc(xs[0], xs[1], out=out)
    for x in xs[2:]:
        ufunc(out, x, out=out)
    if mode == "average":
        xp.divide(out, out.dtype.type(len(xs)), out=out)
    return out


def _merge(node: Node, xs: list[np.ndarray]) -> np.ndarray:
    return merge(node.op.mode, xs)


def _layer_norm(node: Node, xs: list[np.ndarray]) -> np.ndarray:
    op: ops.LayerNorm = node.op
    x = xs[0]
    t = x.dtype.type
    xp = _xp(x)
    mean = xp.mean(x, axis=-1, keepdims=True)
    var = xp.mean(xp.square(x - mean), axis=-1, keepdims=True)
    inv = t(1) / xp.sqrt(var + t(op.epsilon))
    if op.scale:
        inv = inv * node.weights["gamma"].astype(x.dtype, copy=False)
    shift = -mean * inv
    if op.center:
        shift = node.weights["beta"].astype(x.dtype, copy=False) + shift
    return x * inv + shift


def _prelu(node: Node, xs: list[np.ndarray]) -> np.ndarray:
    x = xs[0]
    alpha = node.weights["alpha"].astype(x.dtype, copy=False)
    zero = x.dtype.type(0)
    xp = _xp(x)
    return xp.maximum(x, zero) - alpha * xp.maximum(-x, zero)


def _affine(node: Node, xs: list[np.ndarray]) -> np.ndarray:
    w = node.weights
    return xs[0] * w["scale"].astype(xs[0].dtype, copy=False) + w["shift"].astype(
        xs[0].dtype, copy=False
    )


def _dense(node: Node, xs: list[np.ndarray]) -> np.ndarray:
    x = xs[0]
    out = x @ node.weights["kernel"].astype(x.dtype, copy=False)
    if node.op.use_bias:
        out += node.weights["bias"].astype(x.dtype, copy=False)
    return out


def _flatten(node: Node, xs: list[np.ndarray]) -> np.ndarray:
    x = xs[0]
    if node.op.channels_first and x.ndim > 2:
        x = _xp(x).moveaxis(x, 1, -1)
    return x.reshape(x.shape[0], -1)


def _global_pool(node: Node, xs: list[np.ndarray]) -> np.ndarray:
    op: ops.GlobalPool1D = node.op
    xp = _xp(xs[0])
    if op.mode == "logsumexp":
        axis = op.axis + 1
        top = xp.max(xs[0], axis=axis, keepdims=True)
        total = xp.log(xp.sum(xp.exp(xs[0] - top), axis=axis, keepdims=True)) + top
        return total if op.keepdims else xp.squeeze(total, axis=axis)
    reduce = {"max": xp.max, "average": xp.mean, "sum": xp.sum}[op.mode]
    return reduce(xs[0], axis=op.axis + 1, keepdims=op.keepdims)


def _zero_insert(x, stride: int):
    """Row ``i`` of ``x`` at row ``i * stride``, zero rows between."""
    xp = _xp(x)
    n, length, ch = x.shape
    out = xp.zeros((n, (length - 1) * stride + 1, ch), dtype=x.dtype)
    out[:, ::stride] = x
    return out


_OPS: dict[type, Callable[[Node, list[np.ndarray]], np.ndarray]] = {
    ops.Conv1D: _conv1d,
    ops.Pool1D: _pool1d,
    ops.Crop1D: lambda n, xs: xs[0][:, n.op.start : xs[0].shape[1] - n.op.end],
    ops.ZeroPad1D: lambda n, xs: _xp(xs[0]).pad(
        xs[0], ((0, 0), (n.op.left, n.op.right), (0, 0))
    ),
    ops.ZeroInsert1D: lambda n, xs: _zero_insert(xs[0], n.op.stride),
    ops.UpSample1D: lambda n, xs: _xp(xs[0]).repeat(xs[0], n.op.size, axis=1),
    ops.Activation: lambda n, xs: apply_activation(n.op, xs[0]),
    ops.PReLU: _prelu,
    ops.ChannelAffine: _affine,
    ops.LayerNorm: _layer_norm,
    ops.Merge: _merge,
    ops.Concatenate: lambda n, xs: _xp(xs[0]).concatenate(xs, axis=n.op.axis + 1),
    ops.Flatten: _flatten,
    ops.Reshape: lambda n, xs: xs[0].reshape((xs[0].shape[0],) + n.op.target_shape),
    ops.Dense: _dense,
    ops.GlobalPool1D: _global_pool,
    ops.ChannelSlice: lambda n, xs: _xp(xs[0]).ascontiguousarray(
        xs[0][..., n.op.start : n.op.end]
    ),
}


def apply(node: Node, xs: list[np.ndarray]) -> np.ndarray:
    """Apply ``node``'s op to its batched inputs ``xs`` (the op's definition)."""
    return _OPS[type(node.op)](node, xs)


def evaluate(
    graph: Graph, feeds: Sequence[np.ndarray], keep_all: bool = True
) -> dict[str, np.ndarray]:
    """Dense forward pass returning node values by name.

    With ``keep_all`` every node's value is kept (the reference activations
    the incremental backends read); otherwise only the outputs, freeing each
    intermediate value once its last reader has run.
    """
    values: dict[str, np.ndarray] = dict(zip(graph.inputs, feeds))
    remaining = {name: 0 for name in graph.nodes}
    for node in graph.nodes.values():
        for src in node.inputs:
            remaining[src] += 1
    for name in graph.outputs:
        remaining[name] += 1
    for name, node in graph.nodes.items():
        if name in values:
            continue
        values[name] = apply(node, [values[i] for i in node.inputs])
        if keep_all:
            continue
        for src in node.inputs:
            remaining[src] -= 1
            if remaining[src] == 0:
                del values[src]  # keep memory to the live activations
    return values


def forward(graph: Graph, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Dense forward pass.

    Parameters
    ----------
    graph : Graph
    feeds : list of ndarray
        One array per model input, in model input order, each of shape
        ``(n_seqs, *input_shape)`` and of the computation dtype.

    Returns
    -------
    list of ndarray
        One array per model output, ``(n_seqs, *output_shape)``.
    """
    values = evaluate(graph, feeds, keep_all=False)
    return [values[name] for name in graph.outputs]


def default_batch_size(graph: Graph, dtype: np.dtype) -> int:
    """Samples per batch so that one batch's activations fit the budget."""
    per_sample = (
        sum(math.prod(d or 1 for d in node.shape) for node in graph.nodes.values())
        * np.dtype(dtype).itemsize
    )
    return int(
        max(
            config.MIN_BATCH,
            min(4096, config.REFERENCE_BATCH_BYTES // max(per_sample, 1)),
        )
    )


def unchanged_rows(
    x: np.ndarray, positions: np.ndarray, alternatives: np.ndarray
) -> np.ndarray:
    """``(n_seqs, n_positions, n_alts)``: whether row ``positions[p]`` of
    sequence ``n`` already equals ``alternatives[a]`` (the mutant is the
    reference, copied, never computed)."""
    return np.all(x[:, positions, None, :] == alternatives[None, None], axis=-1)


class ReferenceBackend(Backend):
    """Naive ISM as a backend: a full forward pass of every mutated input, in
    batches, with the incremental backends' entry (``plan``, ``run``). It is
    the executable specification they are tested against; its plan is the
    device-neutral one (the run reads its edits; every mutant is computed in
    full)."""

    name = "reference"

    def lower(self, plan) -> None:
        """Nothing to lower: every mutant is a dense forward pass."""

    def run(
        self,
        plan,
        feeds: Sequence[np.ndarray],
        sink,
        *,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        skip: np.ndarray | None = None,
        values: np.ndarray | None = None,
        **_ignored,
    ):
        """Every mutant of ``plan`` for ``feeds`` (IR layout), into ``sink``;
        ``batch_size`` mutants per forward pass (default from the budget)."""

        graph = plan.graph
        seq_index = graph.inputs.index(plan.seq_input)
        x = feeds[seq_index]
        edits = plan.edits
        if values is not None:
            edits = type(edits)(
                edits.starts, edits.offsets, np.asarray(values, x.dtype)
            )
        n_seqs = x.shape[0]
        batch = batch_size or default_batch_size(graph, x.dtype)
        sink.open(
            n_seqs=n_seqs,
            n_positions=edits.n_sites,
            n_alts=edits.n_variants,
            shapes=[plan.shapes[o] for o in graph.outputs],
            dtype=x.dtype,
            xp=np,
        )
        # A mutant whose edit writes what the sequence holds is the reference.
        same = edits.unchanged(x)
        sink.begin_block(0, n_seqs, forward(graph, feeds), same)
        seq_i, pos_i, alt_i = np.nonzero(~same if skip is None else ~(same | skip))
        for start in range(0, len(seq_i), batch):
            sl = slice(start, start + batch)
            s, p, a = seq_i[sl], pos_i[sl], alt_i[sl]
            mutants = [f[s] for f in feeds]
            mutants[seq_index] = mutants[seq_index].copy()
            rows = edits.starts[p][:, None] + edits.offsets[p]
            mutants[seq_index][np.arange(len(s))[:, None], rows] = edits.rows(s, p, a)
            for k, y in enumerate(forward(graph, mutants)):
                sink.write(k, s, p, a, y)
            if progress is not None:
                progress(len(s))
        sink.end_block(0, n_seqs)
        if progress is not None and len(same) and same.any():
            progress(int(same.sum()))
        return RunStats(
            plan=plan,
            seconds={},
            n_mutants=len(seq_i),
            n_copied=int(same.sum()),
            chunk_size=batch,
            block_size=n_seqs,
        )


def naive_ism(
    graph: Graph,
    feeds: Sequence[np.ndarray],
    seq_index: int,
    positions: np.ndarray,
    alternatives: np.ndarray,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Naive ISM: a full forward pass of every mutated input, in batches.

    Parameters
    ----------
    feeds : list of ndarray
        Model inputs of the computation dtype, ``feeds[seq_index]`` of shape
        ``(n_seqs, seq_len, n_channels)``.
    positions : ndarray of int64, shape (n_positions,)
    alternatives : ndarray, shape (n_alts, n_channels), the computation dtype
    progress : callable, optional
        Called with the number of mutants finished after each batch.

    Returns
    -------
    reference : list of ndarray, per output ``(n_seqs, *out_shape)``
    outputs : list of ndarray, per output ``(n_seqs, n_positions, n_alts, *out_shape)``
    """
    from ismkernel.reduce import OutputSink

    backend = ReferenceBackend()
    plan = backend.plan(
        graph,
        graph.inputs[seq_index],
        {name: f.shape[1:] for name, f in zip(graph.inputs, feeds)},
        np.asarray(positions, dtype=np.int64),
        itemsize=feeds[seq_index].dtype.itemsize,
        alternatives=alternatives,
    )
    sink = OutputSink()
    backend.run(plan, feeds, sink, batch_size=batch_size, progress=progress)
    return sink.reference, sink.outputs
