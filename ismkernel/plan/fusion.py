"""Fusion decisions of a plan, as frozen per-node records.

A ``delta`` convolution writes each output row once, and while the row is in
a core's cache (or a thread's registers) it can finish more of the graph's
work on it: the ReLU that reads only it, then the residual add that reads
only that ReLU, then the result's change from its reference for the next
``delta`` convolution, then the change's sum over rows for a global average
or sum. :class:`Epilogue` records what one convolution does; :func:`fuse`
decides it for every convolution of a plan, and marks the nodes after which
mutants whose change vanished exactly may stop (``exit_check``).

The decisions are the same on every device, except that a device's tactic
for a convolution may not take the whole epilogue (the CPU's few-channel
profile-head kernel applies a ReLU only): the lowering step says which
convolutions' tactics take it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ismkernel.ir import nodes as ops

if TYPE_CHECKING:  # pragma: no cover
    from ismkernel.plan.planner import NodePlan, Plan

__all__ = ["Epilogue", "fuse", "describe_fusion"]

#: Strategies of the global poolings that read a change's sum over rows.
_SUMS = ("global-avg", "global-sum")


@dataclass(frozen=True)
class Epilogue:
    """What a ``delta`` convolution does to each output row it writes.

    Attributes
    ----------
    relu : bool
        Apply the ReLU node ``relu_node`` (the convolution's only reader).
    residual : str or None
        Then add this node (the other input of the add ``add_node``, which
        reads only that ReLU): a residual block's ``relu(conv(x)) + x``.
    emit_change : bool
        Also write the result's change from its reference, which the next
        ``delta`` convolution reads as its input.
    keep_values : bool
        Write the result's values; without, the result is kept as its change
        alone (nothing reads it but ``delta`` convolutions, fused adds and
        global sums, which take reference plus change).
    row_sums : bool
        Also add up that change over the window's rows, for a global average
        or sum.
    result : str
        The node whose values (or change) the convolution writes: itself, its
        ReLU or the add.
    relu_node, add_node : str or None
        The nodes the convolution computes in its epilogue.
    """

    relu: bool
    residual: str | None
    emit_change: bool
    keep_values: bool
    row_sums: bool
    result: str = ""
    relu_node: str | None = None
    add_node: str | None = None

    def describe(self) -> str:
        return (
            f"Epilogue(relu={self.relu}, residual={self.residual!r}, "
            f"emit_change={self.emit_change}, keep_values={self.keep_values}, "
            f"row_sums={self.row_sums})"
        )


def _same_windows(a: NodePlan, b: NodePlan) -> bool:
    return a.width == b.width and np.array_equal(a.start, b.start)


def _plain_relu(op: ops.Op) -> bool:
    return isinstance(op, ops.Activation) and op.is_plain_relu


def fuse(plan: Plan, full_epilogue: Callable[[NodePlan], bool] | None = None) -> None:
    """Set every node's ``epilogue``, ``fused_into`` and ``exit_check``.

    Parameters
    ----------
    plan : Plan
    full_epilogue : callable, optional
        Whether a ``delta`` convolution's tactic takes the whole epilogue
        (otherwise it applies a ReLU at most); default: every one does.
    """
    graph = plan.graph
    outputs = set(graph.outputs)
    readers = graph.consumers()
    nodes = plan.nodes
    full = full_epilogue or (lambda p: True)
    for p in nodes.values():
        p.epilogue, p.fused_into, p.exit_check = None, "", False

    # Cut points: a tile node that is all a chunk still needs, after an op
    # that can clamp a change to exactly zero. (An output no node reads is
    # written as soon as it is computed.)
    for name, _, kept in plan.liveness():
        varying = {
            n
            for n in kept
            if nodes[n].kind != "const" and (n not in outputs or n in plan.last_use)
        }
        if (
            varying == {name}
            and nodes[name].kind == "tile"
            and graph.nodes[name].op.can_vanish
            and name not in outputs
        ):
            nodes[name].exit_check = True

    delta = [n for n, p in nodes.items() if p.strategy == "delta"]
    # A plain ReLU that is the only reader of a delta convolution, on the
    # same windows, is applied by the convolution while each row is in cache.
    relu_of: dict[str, str] = {}
    for name in delta:
        p, after = nodes[name], readers[name]
        if (
            len(after) == 1
            and name not in outputs
            and not p.exit_check
            and _plain_relu(graph.nodes[after[0]].op)
            and _same_windows(nodes[after[0]], p)
        ):
            relu_of[name] = after[0]
    # A residual block's add, relu(conv(.)) + x, on the convolution's windows,
    # is written by the convolution too.
    result: dict[str, str] = {}
    residual: dict[str, str] = {}
    add_of: dict[str, str] = {}
    for name in delta:
        if not full(nodes[name]):
            continue
        last = name
        if name in relu_of:
            last = relu_of[name]
            after = readers[last]
            add = graph.nodes[after[0]] if len(after) == 1 else None
            if (
                add is not None
                and last not in outputs
                and not nodes[last].exit_check
                and isinstance(add.op, ops.Merge)
                and add.op.mode == "add"
                and len(add.inputs) == 2
                and add.inputs[0] != add.inputs[1]
                and _same_windows(nodes[add.name], nodes[name])
            ):
                residual[name] = next(i for i in add.inputs if i != last)
                add_of[name] = add.name
                last = add.name
        result[name] = last
    # The result's change, where a delta convolution reads it next.
    reads_change = set(delta)
    emit = {
        n for n, last in result.items() if any(r in reads_change for r in readers[last])
    }
    adder = {add: conv for conv, add in add_of.items()}
    no_values: set[str] = set()
    for name in emit:
        last = result[name]
        if last not in outputs and all(
            r in reads_change
            or (r in adder and residual[adder[r]] == last)
            or nodes[r].strategy in _SUMS
            for r in readers[last]
        ):
            no_values.add(last)
    sums = {
        result[n]
        for n in emit
        if any(nodes[r].strategy in _SUMS for r in readers[result[n]])
    }
    for name in delta:
        last = result.get(name, relu_of.get(name, name))
        nodes[name].epilogue = Epilogue(
            relu=name in relu_of,
            residual=residual.get(name),
            emit_change=name in emit,
            keep_values=last not in no_values,
            row_sums=last in sums,
            result=last,
            relu_node=relu_of.get(name),
            add_node=add_of.get(name),
        )
        if name in relu_of:
            nodes[relu_of[name]].fused_into = name
        if name in add_of:
            nodes[add_of[name]].fused_into = name


def describe_fusion(plan: Plan) -> list[str]:
    """Lines of ``ismkernel inspect`` for the fusion records and early exits."""
    lines = []
    fused = [(n, p.epilogue) for n, p in plan.nodes.items() if p.epilogue is not None]
    if fused:
        lines.append(f"Fused epilogues ({plan.device or 'neutral'} tactics):")
        for name, ep in fused:
            lines.append(f"  {name} -> {ep.result}: {ep.describe()}")
    exits = [n for n, p in plan.nodes.items() if p.exit_check]
    if exits:
        lines.append(
            "Early exit (mutants whose change vanished stop) after: " + ", ".join(exits)
        )
    return lines
