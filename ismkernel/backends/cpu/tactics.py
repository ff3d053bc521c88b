"""The CPU's tactics: how this device computes a plan's ``delta``
convolutions, and the lowering that picks them.

Three ways, chosen per node from the plan's windows:

``col2im``
    One NumPy GEMM of every mutant's input change with all taps at once, then
    ``col2im_ref`` adds each output row's products to its reference row and
    runs the fused epilogue (the walker's shared tactic; narrow windows).
``per-tap``
    Stride 1, at least ``config.CPU_FEW_CHANNELS`` output channels and
    ``config.CPU_PER_TAP_MIN_ROWS`` input rows: BLAS called from inside a
    Numba kernel, one GEMM per tap and mutant on just the changed rows whose
    products land in a block of output rows that stays in cache, the epilogue
    fused (:func:`ismkernel.backends.cpu.kernels.conv_per_tap`).
``few-channels``
    Stride 1 and fewer output channels (a profile head): the products laid
    out rows last, one mutant at a time
    (:func:`ismkernel.backends.cpu.kernels.conv_few_channels`); its epilogue
    is a ReLU at most.

Each tactic counts its own FLOPs and scratch bytes, which size the chunks.
"""

from __future__ import annotations

import numpy as np

from ismkernel import config
from ismkernel.backends.cpu import kernels
from ismkernel.backends.engine import conv_col2im
from ismkernel.ir import nodes as ops
from ismkernel.plan import Plan
from ismkernel.plan.fusion import fuse
from ismkernel.plan.planner import changed_rows, conv_left, per_tap_rows

__all__ = ["lower", "CONV_TACTICS"]


def _per_tap_flops(plan: Plan, name: str) -> float:
    """Mean FLOPs per mutant of a stride-1 delta convolution run one tap at a
    time on only the changed input rows whose product lands in the output
    window."""
    node = plan.graph.nodes[name]
    src, p = plan.nodes[node.inputs[0]], plan.nodes[name]
    cin = plan.shapes[node.inputs[0]][1]
    _, j0, j1 = per_tap_rows(
        node.op, conv_left(plan, name), src.start, src.width, src.lo, src.hi,
        p.start, p.width,
    )  # fmt: skip
    rows = np.maximum(j1 - j0, 0).sum(axis=0)
    mean = float(rows.mean()) if rows.size else 0.0
    return 2.0 * mean * cin * node.op.n_filters


def lower(plan: Plan) -> None:
    """Pick each ``delta`` convolution's tactic (with its FLOPs and bytes),
    then fuse epilogues: ``few-channels`` takes a ReLU at most."""
    itemsize = plan.itemsize
    for name, p in plan.nodes.items():
        p.tactic = p.strategy
        if p.strategy != "delta":
            continue
        node = plan.graph.nodes[name]
        op: ops.Conv1D = node.op
        src = plan.nodes[node.inputs[0]]
        cin = plan.shapes[node.inputs[0]][1]
        p.tactic = "col2im"
        if op.groups != 1 or op.stride != 1:
            continue
        base = p.width * p.shape[1] * itemsize
        if (
            op.n_filters >= config.CPU_FEW_CHANNELS
            and src.width >= config.CPU_PER_TAP_MIN_ROWS
        ):
            p.tactic = "per-tap"
            p.flops_plan = _per_tap_flops(plan, name)
            p.bytes_per_mutant = base + src.width * cin * itemsize
        elif op.n_filters < config.CPU_FEW_CHANNELS:
            j0, j1 = changed_rows(src.start, src.width, src.lo, src.hi)
            rows = float((j1 - j0).mean()) if j0.size else 0.0
            p.tactic = "few-channels"
            p.flops_plan = 2.0 * rows * op.kernel_size * cin * op.n_filters
            p.bytes_per_mutant = base + src.width * cin * itemsize
    fuse(plan, full_epilogue=lambda p: p.tactic != "few-channels")


def prepare(plan: Plan, name: str, info: dict, dtype) -> None:
    """A tactic's constants for node ``name``, once per plan: the kernel laid
    out per tap and the rows each planned position's taps multiply."""
    p = plan.nodes[name]
    if p.tactic not in ("per-tap", "few-channels"):
        return
    node = plan.graph.nodes[name]
    src = plan.nodes[node.inputs[0]]
    if p.tactic == "per-tap":
        info["per_tap"] = np.ascontiguousarray(info["kernel"])
        # per planned position: a chunk takes its mutants' columns
        info["rows"] = per_tap_rows(
            node.op, info["left"], src.start, src.width, src.lo, src.hi,
            p.start, p.width,
        )  # fmt: skip
    else:
        info["rows"] = changed_rows(src.start, src.width, src.lo, src.hi)


def _conv_per_tap(chunk, name, node, p, start, st, delta, own, info):
    op = node.op
    out = chunk.buf(len(chunk.seq), p.width, op.n_filters)
    # Only rows the mutation can change have a non-zero change.
    rows = tuple(r[:, chunk.pos_idx] for r in info["rows"])
    residual, change, sums = chunk.epilogue(name, start, out)
    kernels.conv_per_tap(
        out,
        chunk.refs[name],
        chunk.seq,
        start,
        delta,
        info["per_tap"],
        rows,
        config.CPU_TAP_BLOCK_ROWS,
        p.epilogue.relu,
        residual,
        change,
        sums,
    )
    if own:
        chunk.pool.put(delta)
    return chunk.results(out, change, sums)


def _conv_few_channels(chunk, name, node, p, start, st, delta, own, info):
    op = node.op
    out = kernels.conv_few_channels(
        chunk.buf(len(chunk.seq), p.width, op.n_filters),
        chunk.refs[name],
        chunk.seq,
        start,
        delta,
        info["mats"][0],
        st.start,
        tuple(r[chunk.pos_idx] for r in info["rows"]),
        info["left"],
        op.dilation,
        p.epilogue.relu,
        config.CPU_FEW_CHANNELS_BLOCK_ROWS,
    )
    if own:
        chunk.pool.put(delta)
    return out, None, None


#: The walker's tactic table on this device.
CONV_TACTICS = {
    "col2im": conv_col2im,
    "per-tap": _conv_per_tap,
    "few-channels": _conv_few_channels,
}
