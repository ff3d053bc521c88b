"""Every tunable of ismkernel, in one place."""

from __future__ import annotations

#: Default float dtype of all computation. ``"float64"`` is available on request.
DEFAULT_DTYPE = "float32"

#: Supported computation dtypes.
DTYPES = ("float32", "float64")

#: Upper bound, in bytes, of the activations one reference batch may hold. The
#: reference backend sizes its batches from it when the caller gives none.
REFERENCE_BATCH_BYTES = 256 * 2**20

#: Upper bound, in bytes, of the unfolded (im2col) input block one reference
#: convolution GEMM reads; larger batches are convolved in chunks.
IM2COL_BYTES = 64 * 2**20

#: Batches are never smaller than this many samples, whatever the budget says.
MIN_BATCH = 1

#: Number of channels that marks an input as the (one-hot DNA) sequence input
#: when the caller does not name one.
SEQUENCE_CHANNELS = 4

#: Upper bound, in bytes, of what the cpu backend holds at once: the reference
#: activations of a block of sequences plus the tiles of a chunk of mutants.
CPU_MEMORY_BYTES = 1024 * 2**20

#: Input rows from which a stride-1 delta convolution with many output
#: channels runs one GEMM per kernel tap and mutant (``delta-per-tap``) on
#: just the changed rows whose products land in the window, accumulated into
#: blocks of output rows that stay in cache, the epilogue fused. Narrower
#: windows (a few rows after a pooling layer) leave such GEMMs too short for
#: BLAS, and run one GEMM of every mutant's rows with all taps at once
#: instead. Measured in one process, A against B: BPNet-1000's layers of 25
#: to 149 rows ran 10-20% faster per-tap, Factorized Basset's 13-row
#: convolution 8%; Basset's 5- and 7-row ones stay as they were.
CPU_PER_TAP_MIN_ROWS = 12

#: Output channels below which a delta convolution (a profile head) lays its
#: products out rows last, ``(tap, channel, row)``, one mutant at a time:
#: too few channels to vectorise over, or to make a per-tap GEMM worth it.
CPU_FEW_CHANNELS = 8

#: Input rows per GEMM of a few-channel convolution (a profile head): OpenBLAS
#: ran the products of 1000 rows 1.2-1.5x faster in blocks of 192 to 512.
CPU_FEW_CHANNELS_BLOCK_ROWS = 256

#: Output rows per block of a per-tap convolution: BLAS accumulates every
#: tap's products into the block, then the ReLU, a residual add and the change
#: for the next layer are applied to it, while it is still in a core's cache.
CPU_TAP_BLOCK_ROWS = 64

#: Bytes of tiles one thread's chunk of mutants aims to keep in cache; the
#: default chunk size follows from it and the plan's bytes per mutant.
CPU_CHUNK_BYTES = 16 * 2**20

#: Fewest mutants a default chunk holds where the memory budget allows, however
#: wide the tiles: every node costs a chunk a fixed overhead (Python, kernel and
#: BLAS calls; about 0.9 ms a chunk on BPNet-1000's 33 nodes), and a deep
#: model's narrow early layers need rows for their GEMMs. BPNet-1000 (1.7 MiB
#: of tiles per mutant, 9 by the cache size alone) ran 5% faster at 32 than
#: at 16, measured A against B in one process.
CPU_MIN_CHUNK = 32

#: Most mutants the cpu backend puts in one chunk: beyond a few thousand the
#: GEMMs are no faster and the tiles fall out of cache.
CPU_MAX_CHUNK = 4096

#: Share of free device memory a cuda run plans to use (cuBLAS workspaces,
#: CuPy's pool rounding and the caller's own arrays need the rest).
CUDA_FREE_FRACTION = 0.8

#: Most mutants per chunk on a GPU: enough that a kernel launch (some
#: microseconds) is small against the work it launches.
CUDA_MAX_CHUNK = 4096

#: Threads per block of the device kernels. Grids are rounded up, so the last
#: block is partial.
CUDA_THREADS = 128
