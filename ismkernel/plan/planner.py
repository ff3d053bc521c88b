"""The planner: per node, what a mutation changes, how to compute it, and at
what cost.

A :class:`Plan` is built for one graph, one mutated input, one concrete
sequence length and one set of mutated positions. It holds no data arrays of
the model's activations, only index arithmetic, so it is cheap to build.

Node kinds
----------
``row``
    The mutated input: one row per mutant.
``const``
    Does not depend on the mutated input; the reference value is used.
``tile``
    A length-local op (convolution, pooling, pointwise, merge, crop, ...):
    each mutant's values are computed on a fixed-width window of rows
    ``[start, start + width)`` that covers every row the mutation can change
    and downstream reads; outside it the mutant equals the reference.
``virtual``
    A Flatten read only by Dense layers: never materialised, the Dense layers
    apply their rows to the window's change directly.
``full``
    Every value of every mutant is computed (a vector after Flatten/Dense or
    global pooling, or anything downstream of an op with no incremental
    rule).

Strategies are device-neutral: how a node's values follow from its inputs'
(a lookup of kernel taps, the convolution of a change, a recomputed window,
...). A backend lowers a plan for its device (``backends/<device>/tactics.py``):
it picks a tactic per node and fixes the fusion records
(:mod:`ismkernel.plan.fusion`); ``ismkernel inspect`` prints the lowered plan
a run uses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from ismkernel.errors import UnsupportedLayerError
from ismkernel.ir import Graph, conv_padding, infer_shape
from ismkernel.ir import nodes as ops
from ismkernel.plan.edits import Edits
from ismkernel.plan.fusion import Epilogue, describe_fusion
from ismkernel.plan.intervals import (
    EMPTY,
    backward_need,
    forward_interval,
    hull,
)

__all__ = [
    "NodePlan",
    "Plan",
    "STRATEGIES",
    "build_plan",
    "changed_rows",
    "concrete_shapes",
    "per_tap_rows",
]

#: Every device-neutral strategy a plan may hold; each backend's walker runs
#: each of them, and fails loudly on any other.
STRATEGIES = (
    "row",  # the mutated input
    "reference",  # independent of the mutated input
    "lookup",  # first convolution: kernel taps of the new row minus the old
    "delta",  # convolution of the change of its input window
    "window",  # convolution recomputed on its window
    "pool",  # pooling recomputed on the window
    "pointwise",  # a row-local op applied on the window
    "shift",  # a crop or a pad: the input's window, shifted
    "upsample",  # rows repeated
    "dilate",  # zero rows inserted between rows
    "merge",  # element-wise merge of the inputs' windows
    "concat",  # channel concatenation of the inputs' windows
    "virtual",  # a Flatten read only by Dense layers, never materialised
    "flatten-dense",  # Dense rows of the window applied to its change
    "global-avg",  # mean over the length: reference plus the change's sum
    "global-sum",
    "global-max",  # maxima outside the window combined with the new ones
    "dense",  # every value of every mutant, by the op's reference function
)


@dataclass
class NodePlan:
    """How one node is computed for a batch of mutants.

    Attributes
    ----------
    name : str
    kind : str
        ``row``, ``const``, ``tile``, ``virtual`` or ``full`` (module docs).
    strategy : str
        One of :data:`STRATEGIES`, device-neutral.
    tactic : str
        How the lowering device computes it (``strategy`` unless a backend's
        tactics chose otherwise, e.g. ``per-tap`` for a ``delta``
        convolution on the CPU).
    shape : tuple of int
        Per-sample output shape at this sequence length.
    lo, hi : ndarray of int64, shape (n_positions,)
        For ``row``/``tile`` nodes: rows the mutation at each position can
        change, restricted to the rows needed downstream.
    need : (int, int)
        Rows of this node that anything downstream reads.
    width : int
        Width of every mutant's window (``tile``/``row``).
    start : ndarray of int64, shape (n_positions,)
        First row of the window, per mutated position.
    offset : int
        ``shift``: output row ``o`` is input row ``o + offset``.
    factor : int
        ``upsample``: each input row repeated ``factor`` times; ``dilate``:
        input row ``i`` is output row ``i * factor``, zeros between.
    flops_naive, flops_plan : float
        Floating-point operations per mutant of a full forward pass of this
        node and of the plan's strategy (its tactic, once lowered).
    bytes_per_mutant : int
        Bytes per mutant of this node's values plus its scratch space.
    reason : str
        Why a node that reads the mutated input is computed in full.
    epilogue : Epilogue or None
        A ``delta`` convolution's fused epilogue (lowered plans).
    fused_into : str
        The convolution that computes this node in its epilogue (a ReLU or a
        residual add), or ``""``.
    exit_check : bool
        After this node, mutants whose change is exactly zero stop and keep
        the reference outputs (it is all the rest of the graph reads).
    """

    name: str
    kind: str
    strategy: str
    shape: tuple
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    need: tuple[int, int] = EMPTY
    width: int = 0
    start: np.ndarray | None = None
    flops_naive: float = 0.0
    flops_plan: float = 0.0
    bytes_per_mutant: int = 0
    reason: str = ""
    tactic: str = ""
    offset: int = 0
    factor: int = 1
    epilogue: Epilogue | None = None
    fused_into: str = ""
    exit_check: bool = False


@dataclass
class Plan:
    """The plan of an ISM run (see the module docs).

    Attributes
    ----------
    graph : Graph
    seq_input : str
        Name of the mutated input node.
    seq_len : int
    positions : ndarray of int64
        The first row of each edit site (the mutated positions, for ISM).
    nodes : dict of str to NodePlan, in topological order
    shapes : dict of str to tuple
        Concrete per-sample shapes.
    last_use : dict of str to str
        The last node (in order) that reads each node; outputs read at the end.
    device : str
        The backend whose tactics lowered the plan (``""``: not lowered).
    edits : Edits or None
        What each mutant writes, when the plan is built for a run.
    output_rows : dict
        Rows of each profile output node that are computed (the rest are not).
    """

    graph: Graph
    seq_input: str
    seq_len: int
    positions: np.ndarray
    nodes: dict[str, NodePlan]
    shapes: dict[str, tuple]
    itemsize: int = 4
    last_use: dict[str, str] = field(default_factory=dict)
    device: str = ""
    edits: Edits | None = None
    output_rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Device constants prepared once per plan (kernels laid out for GEMMs,
    #: weights uploaded), by backend name; filled by the backends.
    prepared: dict = field(default_factory=dict, repr=False)

    @property
    def alternatives(self) -> np.ndarray | None:
        """The rows point mutations write (``None`` for other edits)."""
        if self.edits is None or not self.edits.single_row:
            return None
        return self.edits.variant_rows()

    @property
    def flops_naive(self) -> float:
        """FLOPs per mutant of a full forward pass (naive ISM)."""
        return float(sum(n.flops_naive for n in self.nodes.values()))

    @property
    def flops_plan(self) -> float:
        """FLOPs per mutant of this plan."""
        return float(sum(n.flops_plan for n in self.nodes.values()))

    @property
    def ceiling(self) -> float:
        """Naive FLOPs over plan FLOPs: the speedup the arithmetic allows."""
        return self.flops_naive / max(self.flops_plan, 1.0)

    def unfused(self) -> Plan:
        """This plan with no fused epilogues and no early exits, so every node
        holds its own values (what committing an edit to the reference
        activations reads). Made once and kept."""
        cached = self.prepared.get("unfused")
        if cached is None:
            nodes = {
                name: dataclasses.replace(
                    p,
                    epilogue=None
                    if p.epilogue is None
                    else Epilogue(
                        relu=False,
                        residual=None,
                        emit_change=False,
                        keep_values=True,
                        row_sums=False,
                        result=name,
                    ),
                    fused_into="",
                    exit_check=False,
                )
                for name, p in self.nodes.items()
            }
            cached = dataclasses.replace(self, nodes=nodes, prepared={})
            self.prepared["unfused"] = cached
        return cached

    def liveness(self):
        """For each node in order: ``(name, held, kept)``, the nodes whose
        values are held while it runs and those still kept after it (a node is
        dropped after its last reader; outputs are kept)."""
        outputs = set(self.graph.outputs)
        live: set[str] = set()
        for name in self.nodes:
            live.add(name)
            held = set(live)
            live -= {
                src
                for src in held
                if self.last_use.get(src) == name and src not in outputs
            }
            yield name, held, set(live)

    def peak_bytes_per_mutant(self) -> int:
        """Most bytes per mutant alive at once while the nodes run in order."""

        def size(names) -> int:
            return sum(self.nodes[n].bytes_per_mutant for n in names)

        steps = list(self.liveness())
        peak = max((size(held) for _, held, _ in steps), default=0)
        full_out = sum(
            math.prod(self.shapes[o]) * self.itemsize for o in self.graph.outputs
        )
        last = size(steps[-1][2]) if steps else 0
        return int(max(peak, last + full_out))

    def mid_window(self, name: str) -> tuple[int, int] | None:
        """Affected rows of ``name`` for the mutated position nearest the middle."""
        p = self.nodes[name]
        if p.kind not in ("row", "tile") or not len(self.positions):
            return None
        j = int(np.argmin(np.abs(self.positions - self.seq_len // 2)))
        return int(p.lo[j]), int(p.hi[j])

    def describe(self) -> str:
        """A table of the plan, one node per line, then its fusion records
        (``ismkernel inspect``)."""
        rows = [
            (
                "node",
                "op",
                "kind",
                "strategy",
                "tactic",
                "window",
                "width",
                "MFLOP naive",
                "MFLOP plan",
            )
        ]
        for name, p in self.nodes.items():
            op = self.graph.nodes[name].op.kind
            win = self.mid_window(name)
            tactic = p.tactic or p.strategy
            if p.fused_into:
                tactic = f"in {p.fused_into}"
            rows.append(
                (
                    name,
                    op,
                    p.kind,
                    p.strategy,
                    tactic,
                    "-" if win is None else f"[{win[0]}, {win[1]})",
                    str(p.width) if p.kind in ("row", "tile") else "-",
                    f"{p.flops_naive / 1e6:.3f}",
                    f"{p.flops_plan / 1e6:.3f}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for k, r in enumerate(rows):
            cells = [
                c.ljust(w) if i < 7 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths))
            ]
            lines.append("  ".join(cells).rstrip())
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
        mid = self.seq_len // 2
        lines.append(
            f"Sequence length {self.seq_len}; window: rows changed by a mutation at "
            f"position {mid} (nearest planned)."
        )
        lines.append(
            f"Per mutant: naive {self.flops_naive / 1e6:.3f} MFLOP, plan "
            f"{self.flops_plan / 1e6:.3f} MFLOP; ceiling speedup {self.ceiling:.1f}x."
        )
        dense = [f"  {n}: {p.reason}" for n, p in self.nodes.items() if p.reason]
        if dense:
            lines.append("Computed in full from here on:")
            lines.extend(dense)
        fusion = describe_fusion(self)
        if fusion:
            lines.append("")
            lines.extend(fusion)
        return "\n".join(lines)


def concrete_shapes(graph: Graph, input_shapes: dict[str, tuple]) -> dict[str, tuple]:
    """Per-sample shapes of every node for concrete input shapes."""
    shapes: dict[str, tuple] = {}
    for name, node in graph.nodes.items():
        if isinstance(node.op, ops.Input):
            shapes[name] = tuple(input_shapes[name])
        else:
            shapes[name] = tuple(infer_shape(node, [shapes[i] for i in node.inputs]))
    return shapes


def _local_rule(node: ops.Node, in_shapes: list[tuple], out_shape: tuple):
    """``(strategy, "")`` for an op with a window rule on rank-2 inputs, else
    ``("", why not)``."""
    if len(out_shape) != 2 or any(len(s) != 2 for s in in_shapes):
        return "", f"{node.op.kind} on a tensor that is not (length, channels)"
    strategy, reason = node.op.rule(node, in_shapes, out_shape)
    # ("conv" is resolved to lookup, delta or window once widths are known)
    if strategy and strategy not in STRATEGIES + ("conv",):
        raise UnsupportedLayerError(
            f"{node.where()}: its rule names the strategy {strategy!r}, which no "
            f"backend runs; known strategies: {', '.join(STRATEGIES)}"
        )
    return strategy, reason


#: Cost, in FLOP equivalents, of moving one value through memory (im2col
#: copies, per-tap products); used only to choose between strategies.
_MOVE_COST = 4.0


def _conv_costs(op: ops.Conv1D, cin: int, w_in: int, w_out: int) -> tuple[float, ...]:
    """FLOPs of the delta and window strategies, and their costs with data
    movement (per-tap products written and re-read; the im2col copy)."""
    depth = op.kernel_size * (cin // op.groups)
    delta = 2.0 * w_in * depth * op.n_filters
    window = 2.0 * w_out * depth * op.n_filters
    delta_cost = delta + _MOVE_COST * w_in * op.kernel_size * op.n_filters
    window_cost = window + _MOVE_COST * w_out * depth
    return delta, window, delta_cost, window_cost


def changed_rows(
    in_start: np.ndarray, in_width: int, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[j0, j1)`` of an input window ``[in_start, in_start +
    in_width)`` that lie in the changed rows ``[lo, hi)``, per mutant."""
    j0 = np.clip(lo - in_start, 0, in_width)
    return j0, np.maximum(np.clip(hi - in_start, 0, in_width), j0)


def per_tap_rows(
    op: ops.Conv1D,
    left: int,
    in_start: np.ndarray,
    in_width: int,
    lo: np.ndarray,
    hi: np.ndarray,
    out_start: np.ndarray,
    out_width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of a stride-1 ``delta`` convolution, per tap and mutant.

    Input row ``in_start + j`` of the input window times tap ``k`` lands on
    output window row ``first[k] + j``. Returns ``first``, ``j0``, ``j1``,
    each ``(kernel_size, n)``: ``[j0, j1)`` are the input window rows that
    can change (``[lo, hi)``) and whose product lands in the output window.
    """
    shift = in_start - out_start + left
    first = shift[None, :] - op.dilation * np.arange(op.kernel_size)[:, None]
    j0, j1 = changed_rows(in_start, in_width, lo, hi)
    return first, np.maximum(j0[None, :], -first), np.minimum(j1, out_width - first)


def conv_left(plan: Plan, name: str) -> int:
    """Left padding of convolution ``name`` at the plan's input length."""
    node = plan.graph.nodes[name]
    op = node.op
    in_len = plan.shapes[node.inputs[0]][0]
    return conv_padding(in_len, op.kernel_size, op.stride, op.dilation, op.padding)[0]


def build_plan(
    graph: Graph,
    seq_input: str,
    input_shapes: dict[str, tuple],
    positions: np.ndarray,
    itemsize: int = 4,
    output_rows: dict[str, tuple[int, int]] | None = None,
    alternatives: np.ndarray | None = None,
    edits: Edits | None = None,
) -> Plan:
    """Plan ISM of ``graph`` mutating input ``seq_input`` at ``positions``
    (or making ``edits``).

    The plan is device-neutral and has no fusion records; a backend lowers it
    (:func:`ismkernel.backends.get_backend` ``(name).plan(...)`` does both).

    Parameters
    ----------
    graph : Graph
    seq_input : str
        Name of the mutated input node.
    input_shapes : dict of str to tuple
        Concrete per-sample shape of every input.
    positions : ndarray of int64
        Mutated rows of ``seq_input``.
    itemsize : int
        Bytes per value of the computation dtype.
    output_rows : dict of str to (start, end), optional
        Rows of (profile) output nodes that are wanted; the rest of
        such an output is neither computed nor read (a summed range of a
        profile, or ``(0, 0)`` for an output nobody reads).
    alternatives : ndarray, shape (n_alts, n_channels), optional
        The rows written at each position (kept with the plan for the run).
    edits : Edits, optional
        Edits other than point mutations (windows, pairs of rows); their
        sites' starts replace ``positions``.
    """
    shapes = concrete_shapes(graph, input_shapes)
    seq_len = shapes[seq_input][0]
    if edits is None and alternatives is not None:
        edits = Edits.point(positions, alternatives)
    positions = np.asarray(positions if edits is None else edits.starts, dtype=np.int64)
    spans = np.ones_like(positions) if edits is None else edits.spans
    # A first convolution reads one changed row as a lookup of kernel taps.
    lookup = edits is None or edits.single_row
    consumers = graph.consumers()
    outputs = set(graph.outputs)

    # 1. Kinds and strategies, forwards.
    kinds: dict[str, str] = {}
    plans: dict[str, NodePlan] = {}
    for name, node in graph.nodes.items():
        op, shape = node.op, shapes[name]
        in_shapes = [shapes[i] for i in node.inputs]
        in_kinds = [kinds[i] for i in node.inputs]
        reason = ""
        if name == seq_input:
            kind, strategy = "row", "row"
        elif isinstance(op, ops.Input) or all(k == "const" for k in in_kinds):
            kind, strategy = "const", "reference"
        elif "virtual" in in_kinds:
            kind, strategy = "full", "flatten-dense"  # only Dense reads a virtual
        elif "full" in in_kinds:
            kind, strategy = "full", "dense"
        elif isinstance(op, ops.Flatten) and len(in_shapes[0]) == 2:
            reads = consumers[name]
            if (
                name not in outputs
                and reads
                and all(
                    isinstance(graph.nodes[c].op, ops.Dense)
                    and len(graph.nodes[c].inputs) == 1
                    for c in reads
                )
            ):
                kind, strategy = "virtual", "virtual"
            else:
                kind, strategy = "full", "dense"
        elif (
            isinstance(op, ops.GlobalPool1D)
            and op.axis == 0
            and len(in_shapes[0]) == 2
            and op.mode != "logsumexp"
        ):
            kind, strategy = (
                "full",
                "global-" + {"average": "avg"}.get(op.mode, op.mode),
            )
        else:
            strategy, reason = _local_rule(node, in_shapes, shape)
            kind = "tile" if strategy else "full"
            strategy = strategy or "dense"
        kinds[name] = kind
        p = NodePlan(name, kind, strategy, shape, reason=reason)
        if strategy == "shift":
            p.offset = int(op.row_offset)
        elif strategy == "upsample":
            p.factor = int(op.size)
        elif strategy == "dilate":
            p.factor = int(op.stride)
        plans[name] = p

    # 2. Rows needed downstream, backwards.
    needs: dict[str, tuple[int, int]] = {}
    for name in reversed(list(graph.nodes)):
        if kinds[name] not in ("row", "tile"):
            continue
        length = shapes[name][0]
        need = EMPTY
        if name in outputs:
            need = (output_rows or {}).get(name, (0, length))
        for c in consumers[name]:
            cp = plans[c]
            if cp.kind in ("full", "virtual"):
                need = (0, length)
            elif cp.kind == "tile":
                cnode = graph.nodes[c]
                for idx, src in enumerate(cnode.inputs):
                    if src == name:
                        need = hull(
                            need, backward_need(cnode.op, needs[c], length, idx)
                        )
        needs[name] = need

    # 3. Affected intervals, widths and window starts, forwards.
    for name, node in graph.nodes.items():
        p = plans[name]
        in_shapes = [shapes[i] for i in node.inputs]
        p.flops_naive = (
            0.0
            if isinstance(node.op, ops.Input)
            else node.op.flops(node, in_shapes, p.shape)
        )
        if p.kind in ("row", "tile"):
            length = p.shape[0]
            if p.kind == "row":
                lo, hi = positions.copy(), positions + spans
            else:
                ins = []
                for src in node.inputs:
                    sp = plans[src]
                    if sp.kind == "const":
                        z = np.zeros_like(positions)
                        ins.append((z, z))
                    else:
                        ins.append((sp.lo, sp.hi))
                lo, hi = forward_interval(
                    node.op, ins, [s[0] for s in in_shapes], length
                )
            nlo, nhi = needs[name]
            lo, hi = np.maximum(lo, nlo), np.minimum(hi, nhi)
            empty = lo >= hi
            lo, hi = np.where(empty, 0, lo), np.where(empty, 0, hi)
            width = int(max(1, (hi - lo).max(initial=1)))
            width = min(width, max(nhi - nlo, 1))
            p.lo, p.hi, p.need, p.width = lo, hi, (nlo, nhi), width
            p.start = np.clip(lo, nlo, max(nlo, nhi - width)).astype(np.int64)
            if p.kind == "row" and nhi - nlo < 1:
                p.start = np.clip(positions, 0, length - 1)
            channels = p.shape[1]
            p.bytes_per_mutant = width * channels * itemsize
            _cost(p, node, plans, shapes, itemsize, lookup)
        elif p.kind == "full":
            p.bytes_per_mutant = math.prod(p.shape) * itemsize
            if p.strategy == "flatten-dense":
                src = plans[node.inputs[0]]  # the virtual Flatten
                tile = plans[graph.nodes[src.name].inputs[0]]
                p.flops_plan = 2.0 * tile.width * tile.shape[1] * node.op.units
            elif p.strategy.startswith("global"):
                tile = plans[node.inputs[0]]
                p.flops_plan = float(tile.width * tile.shape[1])
            else:
                p.flops_plan = p.flops_naive
        if p.kind == "const":
            p.flops_plan = 0.0
        p.tactic = p.strategy

    last_use: dict[str, str] = {}
    for name, node in graph.nodes.items():
        for src in node.inputs:
            last_use[src] = name
            if plans[src].kind == "virtual":  # read through the Flatten
                last_use[graph.nodes[src].inputs[0]] = name
    return Plan(
        graph=graph,
        seq_input=seq_input,
        seq_len=seq_len,
        positions=positions,
        nodes=plans,
        shapes=shapes,
        itemsize=itemsize,
        last_use=last_use,
        edits=edits,
        output_rows=dict(output_rows or {}),
    )


def _cost(
    p: NodePlan,
    node: ops.Node,
    plans: dict[str, NodePlan],
    shapes: dict[str, tuple],
    itemsize: int,
    lookup: bool = True,
) -> None:
    """Strategy of a convolution, FLOPs and scratch bytes of a tile node."""
    op = node.op
    size = p.width * p.shape[1]
    if p.kind == "row":
        return
    if p.strategy == "conv":
        src = plans[node.inputs[0]]
        cin = shapes[node.inputs[0]][1]
        delta, window, delta_cost, window_cost = _conv_costs(
            op, cin, src.width, p.width
        )
        if src.kind == "row" and op.groups == 1 and lookup:
            p.strategy, p.flops_plan = "lookup", float(op.kernel_size * op.n_filters)
            p.bytes_per_mutant += op.kernel_size * op.n_filters * itemsize
        elif delta_cost <= window_cost:
            # one GEMM of the input change with every tap, the products then
            # added onto the output window; a device's tactics may do it
            # another way (and count its FLOPs and bytes their way)
            p.strategy, p.flops_plan = "delta", delta
            taps_bytes = src.width * op.kernel_size * op.n_filters * itemsize
            p.bytes_per_mutant += taps_bytes + src.width * cin * itemsize
        else:
            p.strategy, p.flops_plan = "window", window
            span = (p.width - 1) * op.stride + (op.kernel_size - 1) * op.dilation + 1
            p.bytes_per_mutant += (
                span * cin + p.width * op.kernel_size * (cin // op.groups)
            ) * itemsize
        return
    in_shapes = [(p.width, shapes[i][1]) for i in node.inputs]
    p.flops_plan = float(node.op.flops(node, in_shapes, (p.width, p.shape[1])))
    if p.strategy == "merge":
        p.bytes_per_mutant += size * len(node.inputs) * itemsize
    elif p.strategy in ("shift", "upsample", "dilate", "concat") or isinstance(
        op, (ops.ChannelSlice, ops.GlobalPool1D)
    ):
        # these move data into a new tile
        p.bytes_per_mutant += size * itemsize
