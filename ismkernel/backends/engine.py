"""The plan walker every incremental backend shares.

A run takes *blocks* of sequences, computes their reference activations once,
and sends *chunks* of mutants (sequence, position, alternative) through the
plan's nodes in order: every node for all mutants of a chunk at once, each
convolution one GEMM (or a device tactic), on windows of rows the plan fixed.
Outputs go to a *sink* (:mod:`ismkernel.reduce`), which keeps or reduces
them where the arrays are.

The walker talks to a device through :class:`Backend`: ``xp`` (the array
module), ``kernels`` (a table with every name of
:data:`ismkernel.backends.KERNELS`), ``gemm``, ``apply`` and ``merge`` (dense
ops), allocation through a pool, host/device copies, whether early exit is
worth a synchronisation, the sizes of blocks and chunks, and the tactics
that lower ``delta`` convolutions. Strategies it has no handler for fail
loudly, naming the node.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ismkernel.errors import InputError, UnsupportedLayerError
from ismkernel.ir import Graph, Node, pool_padding
from ismkernel.ir import nodes as ops
from ismkernel.plan import Edits, Plan, build_plan
from ismkernel.plan.planner import conv_left

__all__ = [
    "Backend",
    "RefState",
    "RunStats",
    "commit",
    "conv_col2im",
    "reference_state",
    "walk",
]


@dataclasses.dataclass
class RunStats:
    """What a run did: time per node (seconds summed over the threads),
    mutants, exact-zero early exits, sizes."""

    plan: Plan
    seconds: dict[str, float]
    n_mutants: int = 0
    n_copied: int = 0
    n_early_exit: int = 0
    chunk_size: int = 0
    block_size: int = 0

    def as_dict(self) -> dict:
        return dict(
            seconds=self.seconds,
            n_mutants=self.n_mutants,
            n_copied=self.n_copied,
            n_early_exit=self.n_early_exit,
            chunk_size=self.chunk_size,
            block_size=self.block_size,
            flops_naive=self.plan.flops_naive,
            flops_plan=self.plan.flops_plan,
        )


class Backend:
    """A device the plan walker runs on (subclasses fill in the hooks).

    Attributes
    ----------
    name : str
    xp : module
        NumPy or a module with its interface (CuPy).
    kernels : object
        Has every kernel of :data:`ismkernel.backends.KERNELS` as an attribute.
    early_exit : bool
        Whether to test mutants for an exactly-zero change at the plan's exit
        checks (a host synchronisation on a GPU).
    """

    name = ""
    xp: Any = np
    kernels: Any = None
    early_exit = True

    # -- the entry -------------------------------------------------------
    def plan(
        self,
        graph: Graph,
        seq_input: str,
        input_shapes: dict[str, tuple],
        positions: np.ndarray,
        *,
        itemsize: int = 4,
        output_rows: dict[str, tuple[int, int]] | None = None,
        alternatives: np.ndarray | None = None,
        edits: Edits | None = None,
    ) -> Plan:
        """The device-neutral plan, lowered with this device's tactics."""
        plan = build_plan(
            graph,
            seq_input,
            input_shapes,
            positions,
            itemsize=itemsize,
            output_rows=output_rows,
            alternatives=alternatives,
            edits=edits,
        )
        self.lower(plan)
        plan.device = self.name
        return plan

    def lower(self, plan: Plan) -> None:
        """Pick tactics and fuse (see ``backends/<device>/tactics.py``)."""
        raise NotImplementedError

    def run(
        self,
        plan: Plan,
        feeds: Sequence[Any],
        sink,
        *,
        batch_size: int | None = None,
        memory_budget: int | None = None,
        threads: int | None = None,
        progress: Callable[[int], None] | None = None,
        early_exit: bool | None = None,
        state: RefState | None = None,
        skip: np.ndarray | None = None,
        values: np.ndarray | None = None,
    ) -> RunStats:
        """Every mutant of ``plan`` for the sequences ``feeds`` (IR layout),
        into ``sink``; ``batch_size`` mutants per chunk (see :func:`walk`)."""
        if plan.device != self.name:
            raise InputError(
                f"a plan lowered for {plan.device or 'no device'!r} cannot run on "
                f"{self.name!r}; build it with get_backend({self.name!r}).plan(...)"
            )
        return walk(
            self,
            plan,
            feeds,
            sink,
            memory_budget=memory_budget,
            chunk_size=batch_size,
            threads=threads,
            progress=progress,
            early_exit=early_exit,
            state=state,
            skip=skip,
            values=values,
        )

    # -- device hooks ----------------------------------------------------
    #: tactic name -> callable(chunk, name, node, plan_node, start, src_state,
    #: delta, own, info) -> (tile, change, sums)
    conv_tactics: dict[str, Callable] = {}

    def asarray(self, x):
        return self.xp.asarray(x)

    def to_host(self, x) -> np.ndarray:
        return np.asarray(x)

    def gemm(self, a, b, out=None):
        return self.xp.matmul(a, b, out=out)

    def apply(self, node: Node, xs: list):
        raise NotImplementedError

    def merge(self, mode: str, xs: list, out=None):
        raise NotImplementedError

    def weight(self, node: Node, name: str, dtype):
        """Weight ``name`` of ``node`` in ``dtype``, on the device."""
        return self.asarray(node.weights[name].astype(dtype, copy=False))

    def evaluate(self, graph: Graph, feeds: Sequence) -> dict:
        """Dense forward pass keeping every node's values."""
        raise NotImplementedError

    def new_pool(self, limit: int):
        raise NotImplementedError

    def prepare_tactic(self, plan: Plan, name: str, info: dict, dtype) -> None:
        """Add a node's tactic constants to ``info`` (once per plan)."""

    def sizes(self, plan, n_seqs, dtype, memory_budget, chunk_size, n_threads):
        """(sequences per block, mutants per chunk, tile bytes per thread)."""
        raise NotImplementedError

    def threads(self, threads: int | None) -> int:
        return 1

    def compute_context(self):
        """A context in which the workers compute (BLAS thread limits)."""
        return contextlib.nullcontext()


@dataclasses.dataclass
class _State:
    """A node's values for the mutants of a chunk."""

    tile: Any = None  # (n_mut, width, ch) for row/tile nodes
    start: np.ndarray | None = None  # (n_mut,) window starts
    value: Any = None  # (n_mut, *shape) for full nodes
    change: Any = None  # tile minus reference, where computed
    # (a node with a change and no tile is kept as its change alone)
    sums: Any = None  # (n_mut, ch) the change summed over rows


class _Prepared:
    """Per-node constants of a plan on a device: GEMM-ready kernels,
    paddings, the lookup's alternative taps, dense rows, tactic constants."""

    def __init__(self, dev: Backend, plan: Plan, dtype: np.dtype):
        self.plan = plan
        self.dtype = dtype
        self.conv: dict[str, dict] = {}
        self.dense_rows: dict[str, Any] = {}
        self.valid_conv: dict[str, Node] = {}
        graph = plan.graph
        for name, node in graph.nodes.items():
            p = plan.nodes[name]
            op = node.op
            if isinstance(op, ops.Conv1D) and p.kind == "tile":
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
                info = dict(
                    left=conv_left(plan, name),
                    mats=[dev.asarray(m) for m in mats],
                    cg=cg,
                    fg=fg,
                    kernel=kernel,
                )
                if p.strategy == "lookup":
                    rows = np.asarray(plan.edits.variant_rows(), dtype=dtype)
                    info["alt_taps"] = dev.gemm(
                        dev.asarray(rows), info["mats"][0]
                    ).reshape(len(rows), op.kernel_size, op.n_filters)
                if p.strategy == "window":
                    self.valid_conv[name] = dataclasses.replace(
                        node,
                        op=dataclasses.replace(op, padding="valid"),
                        weights={k: v.astype(dtype) for k, v in node.weights.items()},
                    )
                dev.prepare_tactic(plan, name, info, dtype)
                info.pop("kernel")
                self.conv[name] = info
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
                self.dense_rows[name] = dev.asarray(np.ascontiguousarray(kernel))


def _prepared(dev: Backend, plan: Plan, dtype: np.dtype) -> _Prepared:
    """The plan's constants on ``dev``, made once per plan and dtype."""
    key = (dev.name, np.dtype(dtype).str)
    if key not in plan.prepared:
        plan.prepared[key] = _Prepared(dev, plan, np.dtype(dtype))
    return plan.prepared[key]


def _block_refs(dev: Backend, plan: Plan, feeds: Sequence) -> tuple[dict, dict]:
    """Reference activations of every node for a block of sequences, and the
    prefix and suffix maxima global max pooling reads."""
    values = dev.evaluate(plan.graph, feeds)
    return values, _extras(dev, plan, values)


def _extras(dev: Backend, plan: Plan, values: dict) -> dict:
    """Prefix and suffix maxima of the inputs of global max poolings."""
    xp = dev.xp
    graph = plan.graph
    extras = {}
    for name, p in plan.nodes.items():
        if p.strategy == "global-max":
            x = values[graph.nodes[name].inputs[0]]
            n, length, ch = x.shape
            pre = xp.full((n, length + 1, ch), -np.inf, dtype=x.dtype)
            xp.maximum.accumulate(x, axis=1, out=pre[:, 1:])
            suf = xp.full((n, length + 1, ch), -np.inf, dtype=x.dtype)
            suf[:, :-1] = xp.maximum.accumulate(x[:, ::-1], axis=1)[:, ::-1]
            extras[name] = (pre, suf)
    return extras


@dataclasses.dataclass
class RefState:
    """Reference activations of every node for a set of sequences, with what
    global max pooling reads, kept across runs (design rounds): a committed
    edit changes them only inside its windows."""

    values: dict
    extras: dict

    def take(self, rows: np.ndarray, dev: Backend) -> RefState:
        """The state of sequences ``rows`` (copies)."""
        idx = dev.asarray(np.asarray(rows, dtype=np.int64))
        values = {k: v[idx] for k, v in self.values.items()}
        extras = {k: (a[idx], b[idx]) for k, (a, b) in self.extras.items()}
        return RefState(values, extras)


def reference_state(dev: Backend, plan: Plan, feeds: Sequence) -> RefState:
    """The dense reference pass of ``feeds``, kept (on the device) for later
    runs."""
    return RefState(*_block_refs(dev, plan, [dev.asarray(f) for f in feeds]))


def commit(
    dev: Backend,
    plan: Plan,
    feeds: Sequence,
    state: RefState,
    parents: np.ndarray,
    sites: np.ndarray,
    variants: np.ndarray,
) -> RefState:
    """The reference state of new sequences: sequence ``parents[i]`` of
    ``feeds`` with edit ``(sites[i], variants[i])`` made (none where the site
    is negative). Each node's values are the parent's, overwritten inside
    the edit's window by the mutant's values, computed incrementally with
    the plan's windows: no full forward pass."""
    graph = plan.graph
    x = dev.asarray(feeds[graph.inputs.index(plan.seq_input)])
    dtype = np.dtype(x.dtype)
    parents = np.asarray(parents, dtype=np.int64)
    new = state.take(parents, dev)
    edited = np.flatnonzero(np.asarray(sites) >= 0)
    if not len(edited):
        return new
    unfused = plan.unfused()
    prep = _prepared(dev, unfused, dtype)
    pool = dev.new_pool(0)
    chunk = _Chunk(dev, prep, state.values, state.extras, x, {}, pool, False)
    rows = dev.asarray(edited)

    def capture(name, st):
        p = unfused.nodes[name]
        target = new.values[name]
        if p.kind == "full":
            target[rows] = st.value.reshape((len(edited),) + target.shape[1:])
        elif p.kind in ("row", "tile") and (
            st.tile is not None or st.change is not None
        ):
            window = st.start[:, None] + np.arange(p.width)
            tile = st.tile
            if tile is None:  # kept as its change
                ref = state.values[name][
                    chunk.di(parents[edited][:, None]), chunk.di(window)
                ]
                tile = ref + st.change
            target[rows[:, None], dev.asarray(window)] = tile

    with dev.compute_context():
        chunk.run(
            0,
            parents[edited],
            np.asarray(sites)[edited],
            np.asarray(variants)[edited],
            lambda *args: None,
            capture=capture,
        )
    for name, p in unfused.nodes.items():
        if p.kind == "virtual":  # a Flatten only Dense layers read
            node = graph.nodes[name]
            new.values[name] = dev.apply(node, [new.values[node.inputs[0]]])
    new.extras = _extras(dev, unfused, new.values)
    return new


def conv_col2im(chunk, name, node, p, start, st, delta, own, info):
    """A ``delta`` convolution as one GEMM of every mutant's input change with
    all taps at once, then ``col2im_ref`` adding each output row's products to
    its reference row and applying the fused epilogue (every device has it)."""
    dev = chunk.dev
    op: ops.Conv1D = node.op
    n_mut, w_in = delta.shape[0], delta.shape[1]
    flat = delta.reshape(n_mut * w_in, -1)
    cg, fg = info["cg"], info["fg"]
    taps = chunk.buf(n_mut, w_in, op.kernel_size, op.n_filters)
    if op.groups == 1:
        dev.gemm(flat, info["mats"][0], out=taps.reshape(n_mut * w_in, -1))
    else:
        for g, mat in enumerate(info["mats"]):
            taps[..., g * fg : (g + 1) * fg] = dev.gemm(
                flat[:, g * cg : (g + 1) * cg], mat
            ).reshape(n_mut, w_in, op.kernel_size, fg)
    if own:
        chunk.pool.put(delta)
    out = chunk.buf(n_mut, p.width, op.n_filters)
    residual, change, sums = chunk.epilogue(name, start, out)
    chunk.k.col2im_ref(
        out,
        chunk.refs[name],
        chunk.di(chunk.seq),
        chunk.di(start),
        taps,
        chunk.di(st.start),
        info["left"],
        op.stride,
        op.dilation,
        p.epilogue.relu,
        residual,
        change,
        sums,
    )
    chunk.pool.put(taps)
    return chunk.results(out, change, sums)


class _Chunk:
    """Computes every node of the plan for one chunk of mutants."""

    def __init__(
        self, dev, prep, refs, extras, x_seq, seconds, pool, early_exit, edits=None
    ):
        self.dev = dev
        self.early_exit = early_exit
        self.xp = dev.xp
        self.k = dev.kernels
        self.prep = prep
        self.pool = pool
        self.plan = prep.plan
        self.graph = self.plan.graph
        self.refs = refs
        self.extras = extras
        self.x_seq = x_seq
        self.edits = self.plan.edits if edits is None else edits
        self.seconds = seconds
        self.states: dict[str, _State] = {}
        self._uploaded: dict[int, tuple] = {}
        self._handlers = {
            "row": self._row,
            "lookup": self._conv,
            "delta": self._conv,
            "window": self._conv,
            "pool": self._pool,
            "pointwise": self._pointwise,
            "shift": self._shift,
            "upsample": self._upsample,
            "dilate": self._dilate,
            "merge": self._merge,
            "concat": self._concat,
            "virtual": self._virtual,
            "flatten-dense": self._flatten_dense,
            "global-avg": self._global_sum,
            "global-sum": self._global_sum,
            "global-max": self._global_max,
            "dense": self._dense,
        }

    # -- helpers ----------------------------------------------------------
    def di(self, a):
        """Host index array ``a`` on the device: uploaded once per chunk (the
        walker's own index logic stays on the host, so it never waits for the
        device); itself on a host device."""
        if self.xp is np or a is None:
            return a
        hit = self._uploaded.get(id(a))
        if hit is None or hit[0] is not a:
            hit = self._uploaded[id(a)] = (a, self.dev.asarray(a))
        return hit[1]

    def buf(self, *shape):
        return self.pool.get(shape, self.prep.dtype)

    def _change(self, name: str, st: _State):
        """Mutant minus reference on the tile's window of node ``name`` (pooled)."""
        out = self.buf(*st.tile.shape)
        return self.k.change(
            st.tile, self.di(st.start), self.refs[name], self.di(self.seq), out=out
        )

    def _drop_gathered(self, x, st: _State | None) -> None:
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
        out = self.buf(len(self.seq), width, ref.shape[2])
        seq, start = self.di(self.seq), self.di(start)
        if state is not None and state.tile is None and state.change is not None:
            # kept as its change (only fused readers are planned to read it)
            t0 = self.di(state.start)
            values = self.k.gather(None, None, ref, seq, t0, state.change.shape[1])
            values += state.change
            return self.k.gather(values, t0, ref, seq, start, width, out=out)
        if state is None or state.tile is None:
            return self.k.gather(None, None, ref, seq, start, width, out=out)
        return self.k.gather(
            state.tile, self.di(state.start), ref, seq, start, width, out=out
        )

    def _full(self, name: str):
        """All values of node ``name`` for every mutant."""
        p = self.plan.nodes[name]
        if p.kind == "const":
            return self.refs[name][self.di(self.seq)]
        st = self.states[name]
        if p.kind == "full":
            return st.value
        if p.kind == "virtual":
            node = self.graph.nodes[name]
            return self.dev.apply(node, [self._full(node.inputs[0])])
        length = self.plan.shapes[name][0]
        zero = np.zeros(len(self.seq), dtype=np.int64)
        return self._window_of(st, name, zero, length)

    # -- the pass ---------------------------------------------------------
    def run(self, b0, seq, pos_idx, alt_idx, on_output: Callable, capture=None) -> int:
        """Compute the chunk of mutants ``(b0 + seq, pos_idx, alt_idx)`` (the
        block starts at sequence ``b0``); ``on_output(k, rows, values)``
        receives outputs, ``capture(name, state)`` (optional) every node's
        values as they are computed.

        Returns the number of mutants that stopped early (exact zero change).
        """
        self.b0 = b0
        self.seq, self.pos_idx, self.alt_idx = seq, pos_idx, alt_idx
        rows = np.arange(len(seq))
        self.states = states = {}
        early = 0
        outputs = self.graph.outputs
        written: set[str] = set()  # outputs written for the chunk's mutants
        for name, node in self.graph.nodes.items():
            p = self.plan.nodes[name]
            t0 = time.perf_counter()
            if p.kind != "const":
                states[name] = self._node(name, node, p)
                if capture is not None:
                    capture(name, states[name])
            if p.exit_check and self.early_exit:
                st = states[name]
                same = self.dev.to_host(
                    self.k.all_zero(st.change)
                    if st.tile is None
                    else self.k.unchanged(
                        st.tile,
                        self.di(st.start),
                        self.refs[name],
                        self.di(self.seq),
                    )
                )
                if same.any():
                    keep = ~same
                    early += int(same.sum())
                    # their outputs not yet written are the reference's
                    for k, out_name in enumerate(outputs):
                        if out_name not in written:
                            on_output(
                                k,
                                rows[same],
                                self.refs[out_name][self.di(self.seq[same])],
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
                    self.states = states = {
                        name: _State(
                            tile=tile, start=st.start[keep], change=change, sums=sums
                        )
                    }
                    self.pool.put(st.tile)
                    self.pool.put(st.change)
            for k, out_name in enumerate(outputs):
                if out_name == name:
                    values = self._full(name)
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

    def _node(self, name: str, node: Node, p) -> _State:
        if p.fused_into:
            # computed by the convolution before: share its state
            ep = self.plan.nodes[p.fused_into].epilogue
            src = ep.relu_node if name == ep.add_node else node.inputs[0]
            return dataclasses.replace(self.states[src])
        handler = self._handlers.get(p.strategy)
        if handler is None:
            raise UnsupportedLayerError(
                f"{node.where()}: the plan's strategy {p.strategy!r} has no rule "
                f"in the {self.dev.name} executor"
            )
        start = p.start[self.pos_idx] if p.start is not None else None
        return handler(name, node, p, start)

    def _row(self, name, node, p, start) -> _State:
        """The mutated input on its window: the sequence's rows with the
        edit's rows written (those inside the window: the others are read by
        nothing downstream)."""
        edits, site = self.edits, self.pos_idx
        window = start[:, None] + np.arange(p.width)
        tile = self.x_seq[self.di(self.seq[:, None]), self.di(window)]
        rows = edits.starts[site][:, None] + edits.offsets[site] - start[:, None]
        m, j = np.nonzero((rows >= 0) & (rows < p.width))
        values = edits.rows(self.b0 + self.seq, site, self.alt_idx)[m, j]
        tile[self.di(m), self.di(rows[m, j])] = self.dev.asarray(values)
        return _State(tile=tile, start=start)

    def _virtual(self, name, node, p, start) -> _State:
        return _State()  # read only by flatten-dense nodes

    def _pool(self, name, node, p, start) -> _State:
        op = node.op
        src = node.inputs[0]
        st = self.states.get(src)
        in_len = self.plan.shapes[src][0]
        left, _, _ = pool_padding(in_len, op.pool_size, op.stride, op.padding)
        out = self.k.pool_window(
            st.tile,
            self.di(st.start),
            self.refs[src],
            self.di(self.seq),
            self.di(start),
            p.width,
            op.pool_size,
            op.stride,
            left,
            op.mode == "max",
            out=self.buf(len(self.seq), p.width, self.plan.shapes[src][1]),
        )
        return _State(tile=out, start=start)

    def _pointwise(self, name, node, p, start) -> _State:
        src = node.inputs[0]
        st = self.states.get(src)
        x = self._window_of(st, src, start, p.width)
        if (
            st is not None
            and x is st.tile
            and self.plan.last_use.get(src) == name
            and src not in self.graph.outputs
            and not self._shared(src, x)
            and self._in_place(node, x)
        ):
            return _State(tile=x, start=start)
        y = self.dev.apply(node, [x])
        self._drop_gathered(x, st)
        return _State(tile=y, start=start)

    def _in_place(self, node: Node, x) -> bool:
        """Apply the cheap pointwise ops in place on a tile nobody reads after."""
        op = node.op
        if isinstance(op, ops.Activation) and op.fn == "linear":
            return True
        if isinstance(op, ops.Activation) and op.is_plain_relu:
            self.k.relu(x)
            return True
        if isinstance(op, ops.ChannelAffine):
            xp = self.xp
            xp.multiply(x, self.dev.weight(node, "scale", x.dtype), out=x)
            xp.add(x, self.dev.weight(node, "shift", x.dtype), out=x)
            return True
        return False

    def _merge(self, name, node, p, start) -> _State:
        op = node.op
        if op.mode == "add" and len(node.inputs) == 2:
            done = self._add_in_place(name, node, start, p.width)
            if done is not None:
                return done
        xs = [
            self._window_of(self.states.get(s), s, start, p.width) for s in node.inputs
        ]
        out = self.dev.merge(op.mode, xs, out=self.buf(*xs[0].shape))
        self._drop_inputs(node, xs)
        return _State(tile=out, start=start)

    def _concat(self, name, node, p, start) -> _State:
        xs = [
            self._window_of(self.states.get(s), s, start, p.width) for s in node.inputs
        ]
        out = self.buf(len(self.seq), p.width, p.shape[1])
        self.xp.concatenate(xs, axis=2, out=out)
        self._drop_inputs(node, xs)
        return _State(tile=out, start=start)

    def _drop_inputs(self, node, xs) -> None:
        for s_name, x in zip(node.inputs, xs):
            self._drop_gathered(x, self.states.get(s_name))

    def _shift(self, name, node, p, start) -> _State:
        src = node.inputs[0]
        tile = self._window_of(self.states.get(src), src, start + p.offset, p.width)
        return _State(tile=tile, start=start)

    def _upsample(self, name, node, p, start) -> _State:
        src = node.inputs[0]
        xp = self.xp
        first = start // p.factor
        n_in = (p.width - 1) // p.factor + 2
        x = xp.repeat(
            self._window_of(self.states.get(src), src, first, n_in), p.factor, axis=1
        )
        idx = (start - first * p.factor)[:, None] + np.arange(p.width)[None, :]
        tile = xp.take_along_axis(x, self.di(idx[:, :, None]), axis=1)
        return _State(tile=tile, start=start)

    def _dilate(self, name, node, p, start) -> _State:
        """Output row ``o`` is input row ``o / factor`` where that divides,
        else zero."""
        src = node.inputs[0]
        xp = self.xp
        first = -(-start // p.factor)  # the first input row on the window
        n_in = (p.width - 1) // p.factor + 1
        x = self._window_of(self.states.get(src), src, first, n_in)
        rows = start[:, None] + np.arange(p.width)[None, :]
        hit = rows % p.factor == 0
        idx = np.where(hit, rows // p.factor - first[:, None], 0)
        idx = np.clip(idx, 0, n_in - 1)
        picked = xp.take_along_axis(x, self.di(idx[:, :, None]), axis=1)
        tile = xp.where(self.di(hit[:, :, None]), picked, picked.dtype.type(0))
        self._drop_gathered(x, self.states.get(src))
        return _State(tile=tile, start=start)

    def _shared(self, src: str, tile) -> bool:
        """Whether a node other than ``src`` holds ``tile`` too (a crop on
        the same window passes its input's tile on)."""
        return any(k != src and st.tile is tile for k, st in self.states.items())

    def _add_in_place(self, name, node, start, width) -> _State | None:
        """``a + b`` into the tile of an input that nothing reads after this
        node and that lies on this node's windows (addition of two operands
        commutes exactly, so either may be the one written)."""
        states = self.states
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
                or self._shared(src, st.tile)
            ):
                continue
            ot = states.get(other)
            if ot is not None and ot.tile is None:
                return None  # not a window of rows (the planner never asks)
            has_tile = ot is not None
            self.k.gather(
                ot.tile if has_tile else None,
                self.di(ot.start) if has_tile else None,
                self.refs[other],
                self.di(self.seq),
                self.di(start),
                width,
                out=st.tile,
                add=True,
            )
            return _State(tile=st.tile, start=start)
        return None

    def _conv(self, name, node, p, start) -> _State:
        """A convolution's tile, and its result's change where the tactic
        writes that too."""
        op: ops.Conv1D = node.op
        info = self.prep.conv[name]
        src = node.inputs[0]
        st = self.states.get(src)
        if p.strategy == "window":
            span = (p.width - 1) * op.stride + (op.kernel_size - 1) * op.dilation + 1
            patch = self._window_of(st, src, start * op.stride - info["left"], span)
            tile = self.dev.apply(self.prep.valid_conv[name], [patch])
            return _State(tile=tile, start=start)
        if p.strategy == "lookup":
            positions = self.plan.positions[self.pos_idx]
            pair = self.seq * len(self.plan.positions) + self.pos_idx
            _, first, inv = np.unique(pair, return_index=True, return_inverse=True)
            x_rows = self.x_seq[self.di(self.seq[first]), self.di(positions[first])]
            ref_taps = self.dev.gemm(x_rows, info["mats"][0]).reshape(
                len(first), op.kernel_size, op.n_filters
            )
            out = self.k.lookup_add(
                self.refs[name],
                self.di(self.seq),
                info["alt_taps"],
                self.di(self.alt_idx),
                ref_taps,
                self.di(inv.astype(np.int64)),
                self.di(positions),
                self.di(start),
                p.width,
                info["left"],
                op.stride,
                op.dilation,
                out=self.buf(len(self.seq), p.width, op.n_filters),
            )
            return _State(tile=out, start=start)
        # delta: the change of the input window, convolved, added to the
        # reference output window
        if st.change is not None:  # written by the convolution before
            delta, own = st.change, False
        else:
            delta, own = self._change(src, st), True
        tactic = self.dev.conv_tactics.get(p.tactic)
        if tactic is None:
            raise UnsupportedLayerError(
                f"{node.where()}: the plan's tactic {p.tactic!r} has no rule in "
                f"the {self.dev.name} executor (lowered for {self.plan.device!r})"
            )
        tile, change, sums = tactic(self, name, node, p, start, st, delta, own, info)
        return _State(tile=tile, start=start, change=change, sums=sums)

    @staticmethod
    def results(out, change, sums):
        """(tile, change, sums) of a convolution: no tile where the change
        replaced the values."""
        if change is out:
            return None, out, sums
        return out, change, sums

    def epilogue(self, name, start, out):
        """What a delta convolution adds after its ReLU (a residual input),
        the buffer for its result's change and the one for that change summed
        over rows (for a global pooling), as the plan's epilogue says."""
        ep = self.plan.nodes[name].epilogue
        residual = change = sums = None
        if ep.residual is not None:
            other = ep.residual
            xs = self.states.get(other)
            if xs is None:
                residual = (None, self.di(start), self.refs[other], False)
            elif xs.tile is None:  # kept as its change
                residual = (xs.change, self.di(xs.start), self.refs[other], True)
            else:
                residual = (xs.tile, self.di(xs.start), self.refs[other], False)
        if ep.emit_change:
            change = out if not ep.keep_values else self.buf(*out.shape)
            if ep.row_sums:
                sums = self.xp.zeros((out.shape[0], out.shape[2]), dtype=out.dtype)
        return residual, change, sums

    # -- full nodes -------------------------------------------------------
    def _dense(self, name, node, p, start) -> _State:
        xs = [self._full(s) for s in node.inputs]
        return _State(value=self.dev.apply(node, xs))

    def _flatten_dense(self, name, node, p, start) -> _State:
        flat = self.graph.nodes[node.inputs[0]]
        src = flat.inputs[0]
        sp = self.plan.nodes[src]
        st = self.states.get(src)
        starts = st.start
        ch = self.plan.shapes[src][1]
        change = self._change(src, st)
        delta = change.reshape(len(self.seq), sp.width * ch)
        rows = self.prep.dense_rows[name]
        out = self.refs[name][self.di(self.seq)].copy()
        order = np.argsort(starts, kind="stable")
        bounds = np.flatnonzero(np.diff(starts[order])) + 1
        for group in np.split(order, bounds):
            s = int(starts[group[0]])
            g = self.di(group)
            out[g] += self.dev.gemm(delta[g], rows[s * ch : (s + sp.width) * ch])
        self.pool.put(change)
        return _State(value=out)

    def _global_sum(self, name, node, p, start) -> _State:
        src = node.inputs[0]
        st = self.states[src]
        length = self.plan.shapes[src][0]
        if st.sums is not None:  # summed by the convolution
            change = st.sums.copy()
        elif st.tile is None:  # kept as its change
            change = self.k.sum_rows(st.change)
        else:
            change = self.k.change_sum(
                st.tile, self.di(st.start), self.refs[src], self.di(self.seq)
            )
        if p.strategy == "global-avg":
            change /= change.dtype.type(length)
        out = self.refs[name][self.di(self.seq)].reshape(len(self.seq), -1) + change
        return _State(value=out.reshape((len(self.seq),) + self.plan.shapes[name]))

    def _global_max(self, name, node, p, start) -> _State:
        xp = self.xp
        src = node.inputs[0]
        sp = self.plan.nodes[src]
        st = self.states[src]
        pre, suf = self.extras[name]
        seq = self.di(self.seq)
        out = xp.maximum(
            xp.maximum(
                pre[seq, self.di(st.start)], suf[seq, self.di(st.start + sp.width)]
            ),
            st.tile.max(axis=1),
        )
        return _State(value=out.reshape((len(self.seq),) + self.plan.shapes[name]))


def walk(
    dev: Backend,
    plan: Plan,
    feeds: Sequence,
    sink,
    *,
    memory_budget: int | None = None,
    chunk_size: int | None = None,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
    early_exit: bool | None = None,
    state: RefState | None = None,
    skip: np.ndarray | None = None,
    values: np.ndarray | None = None,
) -> RunStats:
    """Run every mutant of ``plan`` (its positions times its alternatives) for
    the sequences ``feeds`` on ``dev``, writing outputs into ``sink``.

    Parameters
    ----------
    feeds : list of arrays
        The model inputs in the IR layout, ``feeds[i]`` of shape ``(n_seqs,
        *input_shape)``; the mutated one is the plan's ``seq_input``.
    sink : a sink of :mod:`ismkernel.reduce`
    memory_budget : int, optional
        Bytes the reference activations of a block of sequences and the tiles
        of the chunks in flight may take together.
    chunk_size : int, optional
        Mutants per chunk; default from the budget.
    threads : int, optional
        Chunks computed at once, one per thread (the device's default). Every
        chunk is computed the same way on any thread, so results depend on it
        only where the memory budget, shared by the threads, makes the default
        chunk smaller.
    progress : callable, optional
        Called with the number of mutants finished.
    early_exit : bool, optional
        Stop mutants whose change vanished exactly at the plan's exit checks
        (default: the device's choice). Computing on through an exactly-zero
        change gives the reference's outputs exactly, so either way the
        results are the same.
    state : RefState, optional
        The reference activations of ``feeds``, kept from an earlier pass
        (:func:`reference_state`, :func:`commit`): all sequences are one
        block and no reference pass is made.
    skip : ndarray of bool, shape (n_seqs, n_sites, n_variants), optional
        Mutants not to compute at all (their outputs are whatever the caller
        puts there: a pair whose one side writes the reference is a single
        mutant it already has).
    values : ndarray, optional
        The rows the plan's edits write, for this run (per sequence of
        ``feeds``: ``(n_seqs, n_sites, n_variants, k, n_channels)``), in place
        of the plan's own: one plan serves batches whose edits differ only in
        their values (shuffles of each sequence's windows).
    """
    graph = plan.graph
    index = graph.inputs.index(plan.seq_input)
    x = feeds[index]
    dtype = np.dtype(x.dtype)
    edits = plan.edits
    if values is not None:
        edits = Edits(edits.starts, edits.offsets, np.asarray(values, dtype=dtype))
    n_seqs, n_pos, n_alts = x.shape[0], edits.n_sites, edits.n_variants
    prep = _prepared(dev, plan, dtype)
    n_threads = dev.threads(threads)
    early_exit = dev.early_exit if early_exit is None else bool(early_exit)
    block, chunk, tile_budget = dev.sizes(
        plan, n_seqs, dtype, memory_budget, chunk_size, n_threads
    )
    if state is not None:
        block = n_seqs
    run = RunStats(plan=plan, seconds={}, chunk_size=chunk, block_size=block)
    sink.open(
        n_seqs=n_seqs,
        n_positions=n_pos,
        n_alts=n_alts,
        shapes=[plan.shapes[o] for o in graph.outputs],
        dtype=dtype,
        xp=dev.xp,
    )

    local = threading.local()
    timings: list[dict[str, float]] = []

    def work(refs, extras, xb, b0, s, pj, a):
        if not hasattr(local, "pool"):
            local.pool = dev.new_pool(tile_budget // 2)
            local.seconds = {}
            timings.append(local.seconds)
        worker = _Chunk(
            dev, prep, refs, extras, xb, local.seconds, local.pool, early_exit, edits
        )

        def write(k, rows, values):
            sink.write(k, b0 + s[rows], pj[rows], a[rows], values)

        return worker.run(b0, s, pj, a, write), len(s)

    same = edits.unchanged(dev.to_host(x))
    todo = ~same if skip is None else ~(same | skip)
    with concurrent.futures.ThreadPoolExecutor(n_threads) as workers:
        for b0 in range(0, n_seqs, block):
            b1 = min(n_seqs, b0 + block)
            block_feeds = [f[b0:b1] for f in feeds]
            t0 = time.perf_counter()
            if state is not None:
                refs, extras = state.values, state.extras
            else:
                refs, extras = _block_refs(dev, plan, block_feeds)
            run.seconds["(reference pass)"] = run.seconds.get(
                "(reference pass)", 0.0
            ) + (time.perf_counter() - t0)
            # Unchanged mutants get the reference here; the workers write
            # every other mutant's outputs.
            sink.begin_block(b0, b1, [refs[o] for o in graph.outputs], same[b0:b1])
            s_i, p_i, a_i = np.nonzero(todo[b0:b1])
            run.n_mutants += len(s_i)
            with dev.compute_context():
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
            sink.end_block(b0, b1)
    for seconds in timings:
        for name, t in seconds.items():
            run.seconds[name] = run.seconds.get(name, 0.0) + t
    run.n_copied = int(same.sum())
    if progress is not None and run.n_copied:
        progress(run.n_copied)
    return run
