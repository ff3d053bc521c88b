"""The GPU's tactics: how the cuda device computes a plan's ``delta``
convolutions, and the lowering that picks them.

One way, for every ``delta`` convolution: ``col2im``, one cuBLAS GEMM of
every mutant's input change with all taps at once, then the fused col2im
kernel, which adds each output row's products to its reference row and runs
the whole epilogue (ReLU, residual add, the result's change for the next
convolution, its row sums) with one thread per element. Where the cpu
device calls BLAS once per tap and mutant on rows that stay in a core's
cache, a GPU wants few, large GEMMs: its launch costs microseconds, and its
tensor cores are fed best by one GEMM of a whole chunk. The planner's own
FLOP and byte counts for ``delta`` are this tactic's.
"""

from __future__ import annotations

from ismkernel.backends.engine import conv_col2im
from ismkernel.plan import Plan
from ismkernel.plan.fusion import fuse

__all__ = ["lower", "CONV_TACTICS"]


def lower(plan: Plan) -> None:
    """Every ``delta`` convolution as one GEMM plus the fused col2im, which
    takes the whole epilogue."""
    for p in plan.nodes.values():
        p.tactic = "col2im" if p.strategy == "delta" else p.strategy
    fuse(plan)


#: The walker's tactic table on this device.
CONV_TACTICS = {"col2im": conv_col2im}
