"""The ``cuda`` backend: the shared plan walker on CuPy arrays, with cuBLAS
GEMMs through CuPy and the kernels of :mod:`.kernels`; and
``cuda-emulated``, the same code path on the host.

``cuda`` runs one stream (the caller's current CuPy stream): the walker's
chunks are queued on it one after another with no host synchronisation
inside a chunk, so early exit is off by default (it would wait for the
device at every exit check; computing on through an exactly-zero change
gives the reference exactly). Weights go to the device once per plan, the
reference activations once per block of sequences, and the sink reduces on
the device; NumPy inputs get their results copied back at the end of the
run, CuPy inputs keep them on the device.

``cuda-emulated`` is a testing and research aid: the cuda backend's own
code, with NumPy for CuPy, NumPy's GEMM for cuBLAS and the kernels' bodies
run by ``@njit`` loops over their grids instead of ``@cuda.jit`` kernels.
It is how CI proves the device path without a GPU: under the same tactics
it equals the ``cpu`` backend bit for bit.

Importing this package imports neither CuPy nor ``numba.cuda``;
:mod:`.memory` is the only module that imports CuPy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import weakref
from typing import Any

import numpy as np

from ismkernel import config, errors
from ismkernel.backends import reference
from ismkernel.backends.cuda import memory, tactics
from ismkernel.backends.cuda.kernels import (
    ArrayModule,
    Kernels,
    device_launcher,
    grid_launcher,
)
from ismkernel.backends.engine import Backend, RunStats
from ismkernel.errors import BackendUnavailableError, InputError

__all__ = ["CudaBackend", "EmulatedBackend", "DeviceRunStats", "PRECISIONS"]

#: GEMM precisions a run may ask for.
PRECISIONS = ("float32", "tf32")


@dataclasses.dataclass
class DeviceRunStats(RunStats):
    """:class:`~ismkernel.backends.engine.RunStats` plus the device and the
    GEMM precision of the run."""

    device: str = ""
    precision: str = "float32"

    def as_dict(self) -> dict:
        out = super().as_dict()
        out.update(device=self.device, precision=self.precision)
        return out


class _Pool:
    """Fresh arrays for every tile: CuPy's memory pool already reuses device
    memory, in the order of its stream."""

    def __init__(self, xp):
        self.xp = xp

    def get(self, shape: tuple, dtype) -> Any:
        return self.xp.empty(shape, dtype=dtype)

    def put(self, arr) -> None:
        return None


class CudaBackend(Backend):
    """CuPy arrays, cuBLAS GEMMs and the Numba-CUDA kernels, one stream."""

    name = "cuda"
    early_exit = False
    conv_tactics = tactics.CONV_TACTICS

    def __init__(self):
        ok, why = memory.probe()
        if not ok:
            raise BackendUnavailableError(
                f"backend 'cuda' needs a CUDA GPU reachable by CuPy and numba-cuda: "
                f"{why}; backend='cuda-emulated' runs the same code on the CPU"
            )
        cupy = memory.cupy()
        self._setup()
        # kernels run on the launching thread's current CuPy stream
        self.kernels = Kernels(
            cupy,
            device_launcher(lambda: memory.numba_stream(memory.current_stream())),
        )
        self.xp = ArrayModule(cupy, self.kernels)

    def _setup(self) -> None:
        self._weights: dict[tuple, tuple] = {}
        self._stream = None
        self._device_id = 0
        self._reserved = 0
        self.precision = "float32"

    # -- the entry -------------------------------------------------------
    def lower(self, plan) -> None:
        tactics.lower(plan)

    def run(
        self, plan, feeds, sink, *, precision: str = "float32", **options
    ) -> DeviceRunStats:
        """As :meth:`Backend.run` (same options), on the caller's current
        device and stream; ``precision="tf32"`` lets cuBLAS round float32
        GEMM inputs to TF32. NumPy ``feeds`` give the sink NumPy arrays at
        the end; CuPy ones leave them on the device."""
        if precision not in PRECISIONS:
            raise InputError(
                f"precision must be one of {PRECISIONS}, got {precision!r}"
            )
        self._check_precision(precision)
        on_host = all(isinstance(f, np.ndarray) for f in feeds)
        with self._session(precision):
            feeds = [self.asarray(f) for f in feeds]
            self._reserved = _sink_bytes(sink, plan, feeds)
            try:
                run = super().run(plan, feeds, sink, **options)
            except memory.out_of_memory_errors() as err:
                raise errors.ResourceError(
                    f"the {self.name} device ran out of memory ({err}); pass a "
                    "smaller memory_budget= or batch_size=, or fewer sequences "
                    "per call"
                ) from err
            if on_host:
                self._sink_to_host(sink)
        fields = {f.name: getattr(run, f.name) for f in dataclasses.fields(RunStats)}
        return DeviceRunStats(**fields, device=self.device_name(), precision=precision)

    # -- device state of a run ------------------------------------------
    def _check_precision(self, precision: str) -> None:
        pass

    @contextlib.contextmanager
    def _session(self, precision: str):
        """The caller's device and stream for the run (the walker's worker
        thread makes them its own in :meth:`new_pool`), and the GEMM
        precision."""
        self._stream = memory.current_stream()
        self._device_id = self.xp.cuda.Device().id
        self.precision = precision
        with memory.precision(precision):
            yield

    def _sink_to_host(self, sink) -> None:
        """The sink's arrays copied to the host, asynchronously on the run's
        stream with one wait at the end."""
        for attr in ("outputs", "reference", "scores", "full_reference"):
            arrays = getattr(sink, attr, None)
            if isinstance(arrays, list) and arrays:
                setattr(sink, attr, memory.to_host_all(arrays, self._stream))

    def device_name(self) -> str:
        return memory.device_name()

    def free_bytes(self) -> int:
        return memory.free_bytes()

    # -- device hooks ----------------------------------------------------
    def asarray(self, x):
        return self.xp.asarray(x)

    def to_host(self, x) -> np.ndarray:
        return memory.to_host(x, self._stream)

    def gemm(self, a, b, out=None):
        return self.xp.matmul(a, b, out=out)

    def _device_array(self, a: np.ndarray, dtype) -> Any:
        """Host weight ``a`` in ``dtype`` on the device, uploaded once and
        kept while ``a`` lives."""
        key = (id(a), np.dtype(dtype).str)
        hit = self._weights.get(key)
        if hit is None or hit[0]() is not a:
            hit = (weakref.ref(a), self.asarray(a.astype(dtype, copy=False)))
            self._weights[key] = hit
            weakref.finalize(a, self._weights.pop, key, None)
        return hit[1]

    def on_device(self, node, dtype):
        """``node`` with its weights on the device, in ``dtype``."""
        if not node.weights:
            return node
        return dataclasses.replace(
            node,
            weights={k: self._device_array(w, dtype) for k, w in node.weights.items()},
        )

    def weight(self, node, name, dtype):
        return self._device_array(node.weights[name], dtype)

    def apply(self, node, xs):
        return reference.apply(self.on_device(node, xs[0].dtype), xs)

    def merge(self, mode, xs, out=None):
        return reference.merge(mode, xs, out=out)

    def evaluate(self, graph, feeds):
        """Dense forward pass keeping every node's values (the reference's
        ops on the device's arrays)."""
        values = dict(zip(graph.inputs, feeds))
        for name, node in graph.nodes.items():
            if name not in values:
                values[name] = self.apply(node, [values[i] for i in node.inputs])
        return values

    def new_pool(self, limit: int) -> _Pool:
        # Called once in each worker thread before its first chunk: the
        # thread takes the run's device and stream as its current ones.
        if self._stream is not None:
            self.xp.cuda.Device(self._device_id).use()
            self._stream.use()
        return _Pool(self.xp)

    def threads(self, threads: int | None) -> int:
        return 1  # one stream: chunks are queued in order

    def sizes(self, plan, n_seqs, dtype, memory_budget, chunk_size, n_threads):
        """Sequences per block and mutants per chunk from the free device
        memory (less the sink's arrays) and ``memory_budget``: a quarter for
        the reference activations of a block, the rest for a chunk's tiles.
        A model whose one sequence and one mutant do not fit raises a
        ``ResourceError`` saying how many bytes it needs."""
        itemsize = np.dtype(dtype).itemsize
        free = int(self.free_bytes() * config.CUDA_FREE_FRACTION) - self._reserved
        budget = min(int(memory_budget), free) if memory_budget else free
        ref_per_seq = sum(math.prod(s) for s in plan.shapes.values()) * itemsize
        per_mutant = max(plan.peak_bytes_per_mutant(), 1)
        if self._reserved > int(self.free_bytes() * config.CUDA_FREE_FRACTION):
            raise errors.ResourceError(
                f"the outputs of {n_seqs} sequences need {self._reserved:,} bytes "
                f"on the {self.name} device, which has {free + self._reserved:,} "
                "usable; pass fewer sequences per call, or keep only scores "
                "(reduce=, keep_outputs=False)"
            )
        need = ref_per_seq + 2 * per_mutant
        if budget < need:
            raise errors.ResourceError(
                f"one sequence's reference activations ({ref_per_seq:,} bytes) and "
                f"one mutant's tiles ({2 * per_mutant:,} bytes with the next "
                f"chunk's) need {need:,} bytes on the {self.name} device, but "
                f"{max(budget, 0):,} are available"
                + (" within memory_budget" if memory_budget else "")
                + "; raise memory_budget, free device memory, ask for fewer "
                "positions or output rows, or use a shorter input"
            )
        block = int(max(1, min(n_seqs, (budget // 4) // max(ref_per_seq, 1))))
        tile_budget = budget - block * ref_per_seq
        chunk = chunk_size or int(
            max(1, min(config.CUDA_MAX_CHUNK, tile_budget // (2 * per_mutant)))
        )
        return block, chunk, tile_budget


class EmulatedBackend(CudaBackend):
    """The cuda backend's code path on the host: NumPy arrays, NumPy's GEMM
    and the kernels' bodies in ``@njit`` loops over their grids. A testing
    and research aid, not a fast backend."""

    name = "cuda-emulated"

    def __init__(self):
        self._setup()
        self.kernels = Kernels(np, grid_launcher())
        self.xp = ArrayModule(np, self.kernels)

    def _check_precision(self, precision: str) -> None:
        if precision != "float32":
            raise InputError(
                f"precision={precision!r} needs a GPU: NumPy's GEMM has no TF32; "
                "the emulated device computes in float32"
            )

    @contextlib.contextmanager
    def _session(self, precision: str):
        self.precision = precision
        yield

    def _sink_to_host(self, sink) -> None:
        return None

    def device_name(self) -> str:
        return "emulated on the host"

    def free_bytes(self) -> int:
        return int(config.CPU_MEMORY_BYTES)

    def asarray(self, x):
        return np.asarray(x)

    def to_host(self, x) -> np.ndarray:
        return np.asarray(x)

    def gemm(self, a, b, out=None):
        return np.matmul(a, b, out=out)

    def on_device(self, node, dtype):
        return node

    def weight(self, node, name, dtype):
        return node.weights[name].astype(dtype, copy=False)

    def new_pool(self, limit: int) -> _Pool:
        return _Pool(np)

    def compute_context(self):
        """BLAS on one thread, as the cpu device's workers run it, so that
        both devices' GEMMs give the same bits."""
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")


def _sink_bytes(sink, plan, feeds) -> int:
    """Device bytes the sink's arrays take for the whole run (an
    ``OutputSink`` keeps every mutant's outputs)."""
    if not hasattr(sink, "outputs"):
        return 0
    n_seqs = feeds[plan.graph.inputs.index(plan.seq_input)].shape[0]
    itemsize = feeds[0].dtype.itemsize
    edits = getattr(plan, "edits", None)
    if edits is not None:
        n_mutants = edits.n_sites * edits.n_variants
    elif plan.alternatives is not None:
        n_mutants = len(plan.positions) * len(plan.alternatives)
    else:
        return 0
    per_seq = sum(math.prod(plan.shapes[o]) for o in plan.graph.outputs)
    return int(n_seqs * (n_mutants + 1) * per_seq * itemsize)
