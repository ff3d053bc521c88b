"""The CPU executor: runs a :class:`~ismkernel.plan.Plan` on NumPy arrays.

Work is done per *chunk* of mutants (sequence, position, alternative), drawn
from a *block* of sequences whose reference activations are computed once and
kept. Within a chunk every node is computed for all its mutants at once: the
GEMMs of all positions, alternatives and sequences of the chunk are one call
to BLAS, the rest runs in the Numba kernels of :mod:`.kernels`. Chunks run
one per thread, each thread with serial kernels and single-threaded BLAS.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence

import numba
import numpy as np

from ismkernel import config
from ismkernel.backends import reference
from ismkernel.backends.cpu import kernels
from ismkernel.ir import Graph, Node, conv_padding, pool_padding
from ismkernel.ir import nodes as ops
from ismkernel.plan import Plan, build_plan
from ismkernel.plan.planner import changed_rows, is_row_local, per_tap_rows

__all__ = ["cpu_ism", "CpuRun"]

# Ops after which a mutant's change may vanish exactly (clamps, maxima).
_CAN_VANISH = (ops.Activation, ops.PReLU, ops.Pool1D, ops.Merge)


@dataclasses.dataclass
class _State:
    """A node's values for the mutants of a chunk."""

    tile: np.ndarray | None = None  # (n_mut, width, ch) for row/tile nodes
    start: np.ndarray | None = None  # (n_mut,) window starts
    value: np.ndarray | None = None  # (n_mut, *shape) for full nodes
    change: np.ndarray | None = None  # tile minus reference, where computed
    # (a node with a change and no tile is kept as its change alone)
    sums: np.ndarray | None = None  # (n_mut, ch) the change summed over rows


class _Pool:
    """Reuses the large arrays of one chunk in the next.

    Chunks repeat the same shapes, so after the first one no tile is freshly
    allocated: fresh pages cost a page fault each, which on Basset-size tiles
    was a fifth of the run time.
    """

    def __init__(self, limit: int):
        self.free: dict[tuple, list[np.ndarray]] = {}
        self.owned: set[int] = set()
        self.limit = limit  # bytes of free arrays kept for reuse
        self.kept = 0

    def get(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        stack = self.free.get((tuple(shape), np.dtype(dtype).str))
        if stack:
            arr = stack.pop()
            self.kept -= arr.nbytes
            return arr
        arr = np.empty(shape, dtype=dtype)
        self.owned.add(id(arr))
        return arr

    def put(self, arr: np.ndarray | None) -> None:
        if arr is None or id(arr) not in self.owned:
            return
        key = (arr.shape, arr.dtype.str)
        stack = self.free.setdefault(key, [])
        if any(a is arr for a in stack):
            return
        if self.kept + arr.nbytes > self.limit:
            self.owned.discard(id(arr))  # let it go back to the system
            return
        stack.append(arr)
        self.kept += arr.nbytes


@dataclasses.dataclass
class CpuRun:
    """What a run did: time per node (seconds summed over the threads),
    mutants, exact-zero early exits."""

    plan: Plan
    seconds: dict[str, float]
    n_mutants: int = 0
    n_copied: int = 0
    n_early_exit: int = 0
    chunk_size: int = 0
    block_size: int = 0


class _Prepared:
    """Per-node constants of a plan: GEMM-ready kernels, paddings, flags."""

    def __init__(self, plan: Plan, alternatives: np.ndarray, dtype: np.dtype):
        self.plan = plan
        graph = plan.graph
        self.dtype = dtype
        self.conv: dict[str, dict] = {}
        self.dense_rows: dict[str, np.ndarray] = {}
        self.check_zero: set[str] = set()
        self.valid_conv: dict[str, Node] = {}
        for name, node in graph.nodes.items():
            p = plan.nodes[name]
            op = node.op
            if isinstance(op, ops.Conv1D) and p.kind == "tile":
                in_len = plan.shapes[node.inputs[0]][0]
                left, _, _ = conv_padding(
                    in_len, op.kernel_size, op.stride, op.dilation, op.padding
                )
                kernel = node.weights["kernel"].astype(dtype)
                cg, fg = kernel.shape[1], op.n_filters // op.groups
                mats = [
                    np.ascontiguousarray(
                        kernel[:, :, g * fg : (g + 1) * fg]
                        .transpose(1, 0, 2)
                        .reshape(cg, op.kernel_size * fg)
                    )
                    for g in range(op.groups)
                ]
                info = dict(left=left, mats=mats, cg=cg, fg=fg)
                src = plan.nodes[node.inputs[0]]
                if p.strategy == "delta-per-tap":
                    info["per_tap"] = np.ascontiguousarray(kernel)
                    # per planned position: a chunk takes its mutants' columns
                    info["rows"] = per_tap_rows(
                        op, left, src.start, src.width, src.lo, src.hi, p.start, p.width
                    )
                if p.strategy == "delta-few-channels":
                    info["rows"] = changed_rows(src.start, src.width, src.lo, src.hi)
                if p.strategy == "lookup":
                    info["alt_taps"] = (alternatives @ mats[0]).reshape(
                        len(alternatives), op.kernel_size, op.n_filters
                    )
                self.conv[name] = info
                if p.strategy == "window":
                    self.valid_conv[name] = dataclasses.replace(
                        node,
                        op=dataclasses.replace(op, padding="valid"),
                        weights={k: v.astype(dtype) for k, v in node.weights.items()},
                    )
            if p.strategy == "flatten-dense":
                flat = graph.nodes[node.inputs[0]]
                src = plan.shapes[flat.inputs[0]]
                kernel = node.weights["kernel"].astype(dtype)
                if flat.op.channels_first:
                    kernel = (
                        kernel.reshape(src[1], src[0], -1)
                        .transpose(1, 0, 2)
                        .reshape(src[0] * src[1], -1)
                    )
                self.dense_rows[name] = np.ascontiguousarray(kernel)
        # Cut points: a tile node that is all a chunk still needs, after an op
        # that can clamp a change to exactly zero.
        # (An output no node reads is written as soon as it is computed.)
        outputs = set(graph.outputs)
        for name, _, kept in plan.liveness():
            varying = {
                n
                for n in kept
                if plan.nodes[n].kind != "const"
                and (n not in outputs or n in plan.last_use)
            }
            if (
                varying == {name}
                and plan.nodes[name].kind == "tile"
                and isinstance(graph.nodes[name].op, _CAN_VANISH)
                and name not in outputs
            ):
                self.check_zero.add(name)
        # A plain ReLU that is the only reader of a delta convolution, on the
        # same windows, is applied by the convolution while each row is in
        # cache; the ReLU node then passes the tile on.
        readers = graph.consumers()
        self.relu_after: set[str] = set()  # convolutions that apply the ReLU
        self.relu_done: set[str] = set()  # ReLU nodes they apply
        for name in graph.nodes:
            p = plan.nodes[name]
            after = readers[name]
            if (
                p.strategy in ("delta", "delta-per-tap", "delta-few-channels")
                and len(after) == 1
                and name not in outputs
                and name not in self.check_zero
                and _plain_relu(graph.nodes[after[0]].op)
                and _same_windows(plan.nodes[after[0]], p)
            ):
                self.relu_after.add(name)
                self.relu_done.add(after[0])
        # A residual block's add, relu(conv(.)) + x, on the convolution's
        # windows, is written by the delta convolution too, and the result's
        # change from its reference as well where a delta convolution reads
        # it next: one pass over each output row instead of four.
        self.residual: dict[str, str] = {}  # convolution -> the other addend
        self.add_done: dict[str, str] = {}  # adds they compute -> their ReLU
        self.result: dict[str, str] = {}  # delta convolution -> node it writes
        for name in graph.nodes:
            strategy = plan.nodes[name].strategy
            if strategy not in ("delta", "delta-per-tap"):
                continue
            last = name
            if name in self.relu_after:
                last = readers[name][0]
                after = readers[last]
                add = graph.nodes[after[0]] if len(after) == 1 else None
                if (
                    add is not None
                    and last not in outputs
                    and last not in self.check_zero
                    and isinstance(add.op, ops.Merge)
                    and add.op.mode == "add"
                    and len(add.inputs) == 2
                    and add.inputs[0] != add.inputs[1]
                    and _same_windows(plan.nodes[add.name], plan.nodes[name])
                ):
                    self.residual[name] = next(i for i in add.inputs if i != last)
                    self.add_done[add.name] = last
                    last = add.name
            self.result[name] = last
        reads_change = {
            r
            for r, rp in plan.nodes.items()
            if isinstance(graph.nodes[r].op, ops.Conv1D)
            and rp.strategy in ("delta", "delta-per-tap", "delta-few-channels")
        }
        self.emit_change = {
            name
            for name, last in self.result.items()
            if any(r in reads_change for r in readers[last])
        }
        # A result that nothing reads but delta convolutions, fused residual
        # adds and global sums is kept as its change alone: the values are
        # never written, and read back as reference plus change, in cache.
        adder = {last: c for c, last in self.result.items() if last in self.add_done}
        self.no_values: set[str] = set()
        for name in self.emit_change:
            last = self.result[name]
            if last not in outputs and all(
                r in reads_change
                or (r in adder and self.residual[adder[r]] == last)
                or plan.nodes[r].strategy in ("global-avg", "global-sum")
                for r in readers[last]
            ):
                self.no_values.add(last)
        # A result whose change is written and that a global average or sum
        # reads has that change summed by the convolution too, row by row
        # while each is in cache, in the order sum_rows adds them.
        self.sum_change = {
            self.result[name]
            for name in self.emit_change
            if any(
                plan.nodes[r].strategy in ("global-avg", "global-sum")
                for r in readers[self.result[name]]
            )
        }


def _same_windows(a, b) -> bool:
    return a.width == b.width and np.array_equal(a.start, b.start)


def _plain_relu(op) -> bool:
    return (
        isinstance(op, ops.Activation)
        and op.fn == "relu"
        and op.negative_slope == 0
        and op.max_value is None
        and op.threshold == 0
    )


def _in_place(node: Node, x: np.ndarray) -> bool:
    """Apply the cheap pointwise ops in place on a tile nobody reads after."""
    op = node.op
    if isinstance(op, ops.Activation) and op.fn == "linear":
        return True
    if _plain_relu(op):
        kernels.relu(x)
        return True
    if isinstance(op, ops.ChannelAffine):
        np.multiply(x, node.weights["scale"].astype(x.dtype, copy=False), out=x)
        np.add(x, node.weights["shift"].astype(x.dtype, copy=False), out=x)
        return True
    return False


def _block_refs(graph: Graph, feeds: Sequence[np.ndarray], plan: Plan) -> dict:
    """Reference activations of every node for a block of sequences."""
    values = reference.evaluate(graph, feeds)
    extras = {}
    for name, p in plan.nodes.items():
        if p.strategy == "global-max":
            x = values[graph.nodes[name].inputs[0]]
            n, length, ch = x.shape
            pre = np.full((n, length + 1, ch), -np.inf, dtype=x.dtype)
            np.maximum.accumulate(x, axis=1, out=pre[:, 1:])
            suf = np.full((n, length + 1, ch), -np.inf, dtype=x.dtype)
            suf[:, :-1] = np.maximum.accumulate(x[:, ::-1], axis=1)[:, ::-1]
            extras[name] = (pre, suf)
    return values, extras


class _Chunk:
    """Computes every node of the plan for one chunk of mutants."""

    def __init__(self, prep, refs, extras, x_seq, alternatives, seconds, pool):
        self.prep = prep
        self.pool = pool
        self.plan = prep.plan
        self.graph = self.plan.graph
        self.refs = refs
        self.extras = extras
        self.x_seq = x_seq
        self.alts = alternatives
        self.seconds = seconds

    # -- helpers ----------------------------------------------------------
    def _buf(self, *shape) -> np.ndarray:
        return self.pool.get(shape, self.prep.dtype)

    def _change(self, name: str, st: _State) -> np.ndarray:
        """Mutant minus reference on the tile's window of node ``name`` (pooled)."""
        out = self._buf(*st.tile.shape)
        return kernels.change(st.tile, st.start, self.refs[name], self.seq, out=out)

    def _drop_gathered(self, x: np.ndarray, st: _State | None) -> None:
        """Return ``x`` to the pool unless it is ``st``'s own tile."""
        if st is None or x is not st.tile:
            self.pool.put(x)

    def _release(self, arr, states) -> None:
        if arr is not None and not any(
            st.tile is arr or st.change is arr for st in states.values()
        ):
            self.pool.put(arr)

    def _window_of(self, state: _State, name: str, start: np.ndarray, width: int):
        """Values of node ``name`` on rows ``[start, start + width)``."""
        ref = self.refs[name]
        if state is not None and state.tile is not None:
            if state.tile.shape[1] == width and np.array_equal(state.start, start):
                return state.tile
        out = self._buf(len(self.seq), width, ref.shape[2])
        if state is not None and state.tile is None and state.change is not None:
            # kept as its change (only fused readers are planned to read it)
            values = kernels.gather(
                None, None, ref, self.seq, state.start, state.change.shape[1]
            )
            values += state.change
            return kernels.gather(
                values, state.start, ref, self.seq, start, width, out=out
            )
        if state is None or state.tile is None:
            return kernels.gather(None, None, ref, self.seq, start, width, out=out)
        return kernels.gather(
            state.tile, state.start, ref, self.seq, start, width, out=out
        )

    def _full(self, states, name: str) -> np.ndarray:
        """All values of node ``name`` for every mutant."""
        p = self.plan.nodes[name]
        if p.kind == "const":
            return self.refs[name][self.seq]
        st = states[name]
        if p.kind == "full":
            return st.value
        if p.kind == "virtual":
            node = self.graph.nodes[name]
            return reference.apply(node, [self._full(states, node.inputs[0])])
        length = self.plan.shapes[name][0]
        zero = np.zeros(len(self.seq), dtype=np.int64)
        return self._window_of(st, name, zero, length)

    # -- the pass ---------------------------------------------------------
    def run(self, seq, pos_idx, alt_idx, on_output: Callable) -> int:
        """Compute the chunk; ``on_output(k, rows, values)`` receives outputs.

        Returns the number of mutants that stopped early (exact zero change).
        """
        self.seq, self.pos_idx, self.alt_idx = seq, pos_idx, alt_idx
        rows = np.arange(len(seq))
        states: dict[str, _State] = {}
        early = 0
        outputs = self.graph.outputs
        written: set[str] = set()  # outputs written for the chunk's mutants
        for name, node in self.graph.nodes.items():
            p = self.plan.nodes[name]
            t0 = time.perf_counter()
            if p.kind != "const":
                states[name] = self._node(name, node, p, states)
            if name in self.prep.check_zero:
                st = states[name]
                same = (
                    kernels.all_zero(st.change)
                    if st.tile is None
                    else kernels.unchanged(st.tile, st.start, self.refs[name], self.seq)
                )
                if same.any():
                    keep = ~same
                    early += int(same.sum())
                    # their outputs not yet written are the reference's
                    for k, out_name in enumerate(outputs):
                        if out_name not in written:
                            on_output(
                                k, rows[same], self.refs[out_name][self.seq[same]]
                            )
                    rows = rows[keep]
                    self.seq, self.pos_idx, self.alt_idx = (
                        self.seq[keep],
                        self.pos_idx[keep],
                        self.alt_idx[keep],
                    )
                    tile = None if st.tile is None else st.tile[keep]
                    change = None if st.change is None else st.change[keep]
                    sums = None if st.sums is None else st.sums[keep]
                    states = {
                        name: _State(
                            tile=tile, start=st.start[keep], change=change, sums=sums
                        )
                    }
                    self.pool.put(st.tile)
                    self.pool.put(st.change)
            for k, out_name in enumerate(outputs):
                if out_name == name:
                    values = self._full(states, name)
                    on_output(k, rows, values)
                    self._release(values, states)
                    written.add(name)
            for src in list(states):
                if self.plan.last_use.get(src) == name:
                    gone = states.pop(src)
                    self._release(gone.tile, states)
                    self._release(gone.change, states)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            if not len(rows):
                break
        for st in states.values():
            self.pool.put(st.tile)
            self.pool.put(st.change)
        return early

    def _node(self, name: str, node: Node, p, states) -> _State:
        op = node.op
        plan = self.plan
        start = p.start[self.pos_idx] if p.start is not None else None
        if p.kind == "row":
            positions = plan.positions[self.pos_idx]
            tile = self.x_seq[self.seq, start][:, None, :].copy()
            hit = start == positions
            tile[hit, 0] = self.alts[self.alt_idx[hit]]
            return _State(tile=tile, start=start)
        if p.kind == "full":
            return _State(value=self._full_node(name, node, p, states))
        if p.kind == "virtual":
            return _State()  # read only by flatten-dense nodes
        if isinstance(op, ops.Conv1D):
            tile, change, sums = self._conv(name, node, p, start, states)
            return _State(tile=tile, start=start, change=change, sums=sums)
        if isinstance(op, ops.Pool1D):
            src = node.inputs[0]
            st = states.get(src)
            in_len = plan.shapes[src][0]
            left, _, _ = pool_padding(in_len, op.pool_size, op.stride, op.padding)
            out = kernels.pool_window(
                st.tile,
                st.start,
                self.refs[src],
                self.seq,
                start,
                p.width,
                op.pool_size,
                op.stride,
                left,
                op.mode == "max",
                out=self._buf(len(self.seq), p.width, plan.shapes[src][1]),
            )
            return _State(tile=out, start=start)
        if name in self.prep.relu_done or name in self.prep.add_done:
            # computed by the convolution before: share its state
            return dataclasses.replace(
                states[self.prep.add_done.get(name, node.inputs[0])]
            )
        if is_row_local(op):
            src = node.inputs[0]
            st = states.get(src)
            x = self._window_of(st, src, start, p.width)
            if (
                st is not None
                and x is st.tile
                and self.plan.last_use.get(src) == name
                and src not in self.graph.outputs
                and not self._shared(src, x, states)
                and _in_place(node, x)
            ):
                return _State(tile=x, start=start)
            y = reference.apply(node, [x])
            self._drop_gathered(x, st)
            return _State(tile=y, start=start)
        # gather: merges, concatenation, crops, pads, upsampling
        if isinstance(op, ops.Merge) and op.mode == "add" and len(node.inputs) == 2:
            done = self._add_in_place(name, node, start, p.width, states)
            if done is not None:
                return done
        if isinstance(op, (ops.Merge, ops.Concatenate)):
            xs = [
                self._window_of(states.get(s), s, start, p.width) for s in node.inputs
            ]
            if isinstance(op, ops.Concatenate):
                out = self._buf(len(self.seq), p.width, p.shape[1])
                np.concatenate(xs, axis=2, out=out)
            else:
                out = reference.merge(op.mode, xs, out=self._buf(*xs[0].shape))
            for s_name, x in zip(node.inputs, xs):
                self._drop_gathered(x, states.get(s_name))
            return _State(tile=out, start=start)
        src = node.inputs[0]
        st = states.get(src)
        if isinstance(op, ops.Crop1D):
            return _State(
                tile=self._window_of(st, src, start + op.start, p.width), start=start
            )
        if isinstance(op, ops.ZeroPad1D):
            return _State(
                tile=self._window_of(st, src, start - op.left, p.width), start=start
            )
        # UpSample1D
        first = start // op.size
        n_in = (p.width - 1) // op.size + 2
        x = np.repeat(self._window_of(st, src, first, n_in), op.size, axis=1)
        idx = (start - first * op.size)[:, None] + np.arange(p.width)[None, :]
        return _State(tile=np.take_along_axis(x, idx[:, :, None], axis=1), start=start)

    @staticmethod
    def _shared(src: str, tile: np.ndarray, states) -> bool:
        """Whether a node other than ``src`` holds ``tile`` too (a crop on
        the same window passes its input's tile on)."""
        return any(k != src and st.tile is tile for k, st in states.items())

    def _add_in_place(self, name, node, start, width, states) -> _State | None:
        """``a + b`` into the tile of an input that nothing reads after this
        node and that lies on this node's windows (addition of two operands
        commutes exactly, so either may be the one written)."""
        for k in (0, 1):
            src, other = node.inputs[k], node.inputs[1 - k]
            st = states.get(src)
            if (
                src == other
                or st is None
                or st.tile is None
                or st.tile.shape[1] != width
                or self.plan.last_use.get(src) != name
                or src in self.graph.outputs
                or not np.array_equal(st.start, start)
                or self._shared(src, st.tile, states)
            ):
                continue
            ot = states.get(other)
            if ot is not None and ot.tile is None:
                return None  # not a window of rows (the planner never asks)
            has_tile = ot is not None
            kernels.gather(
                ot.tile if has_tile else None,
                ot.start if has_tile else None,
                self.refs[other],
                self.seq,
                start,
                width,
                out=st.tile,
                add=True,
            )
            return _State(tile=st.tile, start=start)
        return None

    def _conv(self, name, node, p, start, states):
        """A convolution's tile, and its result's change where the kernel
        writes that too."""
        op: ops.Conv1D = node.op
        info = self.prep.conv[name]
        src = node.inputs[0]
        sp = self.plan.nodes[src]
        st = states.get(src)
        n_mut = len(self.seq)
        if p.strategy == "window":
            span = (p.width - 1) * op.stride + (op.kernel_size - 1) * op.dilation + 1
            patch = self._window_of(st, src, start * op.stride - info["left"], span)
            return reference.apply(self.prep.valid_conv[name], [patch]), None, None
        if p.strategy == "lookup":
            positions = self.plan.positions[self.pos_idx]
            pair = self.seq * len(self.plan.positions) + self.pos_idx
            _, first, inv = np.unique(pair, return_index=True, return_inverse=True)
            x_rows = self.x_seq[self.seq[first], positions[first]]
            ref_taps = (x_rows @ info["mats"][0]).reshape(
                len(first), op.kernel_size, op.n_filters
            )
            out = kernels.lookup_add(
                self.refs[name],
                self.seq,
                info["alt_taps"],
                self.alt_idx,
                ref_taps,
                inv.astype(np.int64),
                positions,
                start,
                p.width,
                info["left"],
                op.stride,
                op.dilation,
                out=self._buf(len(self.seq), p.width, op.n_filters),
            )
            return out, None, None
        # delta: the change of the input window times every kernel tap, added
        # to the reference output window
        w_in = sp.width
        if st.change is not None:  # written by the convolution before
            delta, own = st.change, False
        else:
            delta, own = self._change(src, st), True
        relu = name in self.prep.relu_after
        if "per_tap" in info:
            out = self._buf(n_mut, p.width, op.n_filters)
            # Only rows the mutation can change have a non-zero change.
            rows = tuple(r[:, self.pos_idx] for r in info["rows"])
            residual, change, sums = self._epilogue(name, start, states, out)
            kernels.conv_per_tap(
                out,
                self.refs[name],
                self.seq,
                start,
                delta,
                info["per_tap"],
                rows,
                config.CPU_TAP_BLOCK_ROWS,
                relu,
                residual,
                change,
                sums,
            )
            if own:
                self.pool.put(delta)
            return self._results(out, change, sums)
        if p.strategy == "delta-few-channels":
            out = kernels.conv_few_channels(
                self._buf(n_mut, p.width, op.n_filters),
                self.refs[name],
                self.seq,
                start,
                delta,
                info["mats"][0],
                st.start,
                tuple(r[self.pos_idx] for r in info["rows"]),
                info["left"],
                op.dilation,
                relu,
                config.CPU_FEW_CHANNELS_BLOCK_ROWS,
            )
            if own:
                self.pool.put(delta)
            return out, None, None
        flat = delta.reshape(n_mut * w_in, -1)
        cg, fg = info["cg"], info["fg"]
        taps = self._buf(n_mut, w_in, op.kernel_size, op.n_filters)
        if op.groups == 1:
            np.matmul(flat, info["mats"][0], out=taps.reshape(n_mut * w_in, -1))
        else:
            for g, mat in enumerate(info["mats"]):
                taps[..., g * fg : (g + 1) * fg] = (
                    flat[:, g * cg : (g + 1) * cg] @ mat
                ).reshape(n_mut, w_in, op.kernel_size, fg)
        if own:
            self.pool.put(delta)
        out = self._buf(n_mut, p.width, op.n_filters)
        residual, change, sums = self._epilogue(name, start, states, out)
        kernels.col2im_ref(
            out,
            self.refs[name],
            self.seq,
            start,
            taps,
            st.start,
            info["left"],
            op.stride,
            op.dilation,
            relu,
            residual,
            change,
            sums,
        )
        self.pool.put(taps)
        return self._results(out, change, sums)

    @staticmethod
    def _results(out, change, sums):
        """(tile, change, sums) of a convolution: no tile where the change
        replaced the values."""
        if change is out:
            return None, out, sums
        return out, change, sums

    def _epilogue(self, name, start, states, out):
        """What a delta convolution adds after its ReLU (a residual input),
        the buffer for its result's change and the one for that change summed
        over rows (for a global pooling), where the plan fuses them."""
        prep = self.prep
        residual = change = None
        if name in prep.residual:
            other = prep.residual[name]
            xs = states.get(other)
            if xs is None:
                residual = (None, start, self.refs[other], False)
            elif xs.tile is None:  # kept as its change
                residual = (xs.change, xs.start, self.refs[other], True)
            else:
                residual = (xs.tile, xs.start, self.refs[other], False)
        sums = None
        if name in prep.emit_change:
            last = prep.result[name]
            change = out if last in prep.no_values else self._buf(*out.shape)
            if last in prep.sum_change:
                sums = np.zeros((out.shape[0], out.shape[2]), dtype=out.dtype)
        return residual, change, sums

    def _full_node(self, name, node, p, states) -> np.ndarray:
        if p.strategy == "flatten-dense":
            flat = self.graph.nodes[node.inputs[0]]
            src = flat.inputs[0]
            sp = self.plan.nodes[src]
            st = states.get(src)
            start = st.start
            ch = self.plan.shapes[src][1]
            change = self._change(src, st)
            delta = change.reshape(len(self.seq), sp.width * ch)
            rows = self.prep.dense_rows[name]
            out = self.refs[name][self.seq].copy()
            order = np.argsort(start, kind="stable")
            bounds = np.flatnonzero(np.diff(start[order])) + 1
            for group in np.split(order, bounds):
                s = int(start[group[0]])
                out[group] += delta[group] @ rows[s * ch : (s + sp.width) * ch]
            self.pool.put(change)
            return out
        if p.strategy in ("global-avg", "global-sum", "global-max"):
            src = node.inputs[0]
            sp = self.plan.nodes[src]
            st = states[src]
            length = self.plan.shapes[src][0]
            if p.strategy != "global-max":
                if st.sums is not None:  # summed by the convolution
                    change = st.sums.copy()
                elif st.tile is None:  # kept as its change
                    change = kernels.sum_rows(st.change)
                else:
                    change = kernels.change_sum(
                        st.tile, st.start, self.refs[src], self.seq
                    )
                if p.strategy == "global-avg":
                    change /= change.dtype.type(length)
                out = self.refs[name][self.seq].reshape(len(self.seq), -1) + change
            else:
                pre, suf = self.extras[name]
                out = np.maximum(
                    np.maximum(
                        pre[self.seq, st.start], suf[self.seq, st.start + sp.width]
                    ),
                    st.tile.max(axis=1),
                )
            return out.reshape((len(self.seq),) + self.plan.shapes[name])
        xs = [self._full(states, s) for s in node.inputs]
        return reference.apply(node, xs)


def _budget(memory_budget: int | None) -> int:
    return int(memory_budget or config.CPU_MEMORY_BYTES)


def default_threads() -> int:
    """Worker threads of the cpu backend: Numba's thread count, which follows
    ``NUMBA_NUM_THREADS`` and otherwise the cores this process may use."""
    return max(1, int(numba.config.NUMBA_NUM_THREADS))


def _blas_threads(n: int):
    """BLAS limited to ``n`` threads inside a ``with``: one per worker thread,
    as the workers are the parallelism and BLAS threads that spin after a
    call would steal their cores."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="blas")


def cpu_ism(
    graph: Graph,
    feeds: Sequence[np.ndarray],
    seq_index: int,
    positions: np.ndarray,
    alternatives: np.ndarray,
    *,
    memory_budget: int | None = None,
    chunk_size: int | None = None,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
    output_rows: dict[str, tuple[int, int]] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], CpuRun]:
    """Incremental ISM on the CPU; same arguments and results as
    :func:`ismkernel.backends.reference.naive_ism`, plus a :class:`CpuRun`.

    Parameters
    ----------
    memory_budget : int, optional
        Bytes the reference activations of a block of sequences and the tiles
        of the chunks in flight may take together (default
        ``config.CPU_MEMORY_BYTES``).
    chunk_size : int, optional
        Mutants per chunk; default from the budget.
    threads : int, optional
        Chunks computed at once, one per thread (default
        :func:`default_threads`). Every chunk is computed the same way on any
        thread, so results depend on it only where the memory budget, shared
        by the threads, makes the default chunk smaller.
    """
    dtype = feeds[seq_index].dtype
    x = feeds[seq_index]
    n_seqs, n_pos, n_alts = x.shape[0], len(positions), len(alternatives)
    seq_name = graph.inputs[seq_index]
    plan = build_plan(
        graph,
        seq_name,
        {name: f.shape[1:] for name, f in zip(graph.inputs, feeds)},
        positions,
        itemsize=dtype.itemsize,
        output_rows=output_rows,
    )
    prep = _Prepared(plan, alternatives, dtype)
    n_threads = int(threads or default_threads())
    budget = _budget(memory_budget)
    ref_per_seq = sum(math.prod(s) for s in plan.shapes.values()) * dtype.itemsize
    # A quarter of the budget for reference activations, the rest for tiles
    # (live ones and those the pools keep for the next chunk), shared by the
    # threads.
    block = int(max(1, min(n_seqs, (budget // 4) // max(ref_per_seq, 1))))
    per_mutant = max(plan.peak_bytes_per_mutant(), 1)
    tile_budget = max(budget - block * ref_per_seq, 0) // n_threads
    # A thread's chunk keeps its tiles about cache-sized, but holds enough
    # mutants to pay for its per-node overheads, within the budget.
    chunk = chunk_size or int(
        max(
            1,
            min(
                config.CPU_MAX_CHUNK,
                tile_budget // (2 * per_mutant),
                max(config.CPU_MIN_CHUNK, config.CPU_CHUNK_BYTES // per_mutant),
            ),
        )
    )
    run = CpuRun(plan=plan, seconds={}, chunk_size=chunk, block_size=block)

    local = threading.local()
    timings: list[dict[str, float]] = []

    def work(refs, extras, xb, b0, s, pj, a):
        if not hasattr(local, "pool"):
            local.pool = _Pool(limit=tile_budget // 2)
            local.seconds = {}
            timings.append(local.seconds)
        worker = _Chunk(prep, refs, extras, xb, alternatives, local.seconds, local.pool)

        def write(k, rows, values):
            outputs[k][b0 + s[rows], pj[rows], a[rows]] = values

        return worker.run(s, pj, a, write), len(s)

    same = reference.unchanged_rows(x, positions, alternatives)
    reference_out: list[np.ndarray] = []
    outputs: list[np.ndarray] = []
    out_shapes = [plan.shapes[o] for o in graph.outputs]
    for shape in out_shapes:
        outputs.append(np.empty((n_seqs, n_pos, n_alts) + shape, dtype=dtype))
        reference_out.append(np.empty((n_seqs,) + shape, dtype=dtype))
    with concurrent.futures.ThreadPoolExecutor(n_threads) as workers:
        for b0 in range(0, n_seqs, block):
            b1 = min(n_seqs, b0 + block)
            block_feeds = [f[b0:b1] for f in feeds]
            t0 = time.perf_counter()
            refs, extras = _block_refs(graph, block_feeds, plan)
            run.seconds["(reference pass)"] = run.seconds.get(
                "(reference pass)", 0.0
            ) + (time.perf_counter() - t0)
            # Unchanged mutants get the reference here; the workers write
            # every other mutant's outputs (touching the pages in parallel).
            u_s, u_p, u_a = np.nonzero(same[b0:b1])
            for k, name in enumerate(graph.outputs):
                reference_out[k][b0:b1] = refs[name]
                outputs[k][b0 + u_s, u_p, u_a] = refs[name][u_s]
            s_i, p_i, a_i = np.nonzero(~same[b0:b1])
            run.n_mutants += len(s_i)
            with _blas_threads(1):
                futures = [
                    workers.submit(
                        work,
                        refs,
                        extras,
                        x[b0:b1],
                        b0,
                        s_i[c0 : c0 + chunk],
                        p_i[c0 : c0 + chunk],
                        a_i[c0 : c0 + chunk],
                    )
                    for c0 in range(0, len(s_i), chunk)
                ]
                try:
                    for fut in concurrent.futures.as_completed(futures):
                        early, n_done = fut.result()
                        run.n_early_exit += early
                        if progress is not None:
                            progress(n_done)
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    for seconds in timings:
        for name, t in seconds.items():
            run.seconds[name] = run.seconds.get(name, 0.0) + t
    run.n_copied = int(same.sum())
    if progress is not None and run.n_copied:
        progress(run.n_copied)
    return reference_out, outputs, run
