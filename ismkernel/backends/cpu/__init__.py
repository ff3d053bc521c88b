"""The ``cpu`` backend: the shared plan walker on NumPy arrays, with BLAS, the
Numba kernels of :mod:`.kernels` and the tactics of :mod:`.tactics`.

Chunks run one per thread (``threads=``, default ``NUMBA_NUM_THREADS``), each
with serial Numba kernels and BLAS limited to one thread while the workers
run: one pool of threads, not two (OpenBLAS threads spin after each GEMM and
on two cores stole one from the next kernel).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ismkernel import config
from ismkernel.backends import reference
from ismkernel.backends.cpu import kernels, tactics
from ismkernel.backends.engine import Backend, RunStats

__all__ = ["CpuBackend", "RunStats", "default_threads"]


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


def default_threads() -> int:
    """Worker threads of the cpu backend: Numba's thread count, which follows
    ``NUMBA_NUM_THREADS`` and otherwise the cores this process may use."""
    return max(1, int(numba.config.NUMBA_NUM_THREADS))


class CpuBackend(Backend):
    """NumPy arrays, OpenBLAS GEMMs and serial Numba kernels, a chunk per
    thread."""

    name = "cpu"
    xp = np
    kernels = kernels
    early_exit = True
    conv_tactics = tactics.CONV_TACTICS

    def lower(self, plan) -> None:
        tactics.lower(plan)

    def prepare_tactic(self, plan, name, info, dtype) -> None:
        tactics.prepare(plan, name, info, dtype)

    def asarray(self, x):
        return np.asarray(x)

    def gemm(self, a, b, out=None):
        return np.matmul(a, b, out=out)

    def apply(self, node, xs):
        return reference.apply(node, xs)

    def merge(self, mode, xs, out=None):
        return reference.merge(mode, xs, out=out)

    def weight(self, node, name, dtype):
        return node.weights[name].astype(dtype, copy=False)

    def evaluate(self, graph, feeds):
        return reference.evaluate(graph, feeds)

    def new_pool(self, limit: int) -> _Pool:
        return _Pool(limit)

    def threads(self, threads: int | None) -> int:
        return int(threads or default_threads())

    def compute_context(self):
        """BLAS limited to one thread per worker: the workers are the
        parallelism, and BLAS threads that spin after a call would steal
        their cores."""
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")

    def sizes(self, plan, n_seqs, dtype, memory_budget, chunk_size, n_threads):
        budget = int(memory_budget or config.CPU_MEMORY_BYTES)
        ref_per_seq = (
            sum(math.prod(s) for s in plan.shapes.values()) * np.dtype(dtype).itemsize
        )
        # A quarter of the budget for reference activations, the rest for
        # tiles (live ones and those the pools keep for the next chunk),
        # shared by the threads.
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
        return block, chunk, tile_budget
