"""When two point mutations provably do not interact.

Across an affine op two changes superpose exactly: ``f(x + a + b) = f(x + a)
+ f(x + b) - f(x)``. Across any other op they do too wherever no output
value sees both, that is where the rows the two changes reach at that node
are disjoint. If that holds at every node that is not affine, the double
mutant's outputs are ``f(i) + f(j) - f(ref)`` and the interaction is exactly
zero: there is nothing to compute.
"""

from __future__ import annotations

import numpy as np

from ismkernel.plan.planner import Plan

__all__ = ["independent_pairs"]


def independent_pairs(plan: Plan, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per pair of the plan's sites (indices into ``plan.positions``), whether
    their changes never meet at a node that is not affine.

    The rows compared are the plan's intervals (hulls of the rows a change can
    reach), so the answer errs towards "they meet": a ``True`` is a proof.
    A vector computed in full (after Flatten, Dense, global pooling) holds
    both changes, so a non-affine op there makes every pair meet.
    """
    first = np.asarray(first, dtype=np.int64)
    second = np.asarray(second, dtype=np.int64)
    ok = np.ones(len(first), dtype=bool)
    for name, p in plan.nodes.items():
        if p.kind == "const" or plan.graph.nodes[name].op.affine:
            continue
        if p.kind in ("row", "tile"):
            lo = np.maximum(p.lo[first], p.lo[second])
            hi = np.minimum(p.hi[first], p.hi[second])
            ok &= lo >= hi
        elif p.kind == "full":
            ok[:] = False
    return ok
