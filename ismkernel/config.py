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

#: Per-mutant bytes of a delta convolution's products of every changed input
#: row with every kernel tap (the array a GEMM over all taps writes) from which
#: the cpu backend runs one GEMM per tap instead, adding each into the output:
#: nothing larger than a core's cache is written, and no products that fall
#: outside the window or on padding are computed.
CPU_TAPS_BYTES = 256 * 2**10

#: ... provided the changed input window has at least this many rows: each
#: per-tap GEMM is one mutant's rows, too few of which leave BLAS idle.
CPU_PER_TAP_MIN_ROWS = 128

#: Bytes of tiles one thread's chunk of mutants aims to keep in cache; the
#: default chunk size follows from it and the plan's bytes per mutant.
CPU_CHUNK_BYTES = 16 * 2**20

#: Fewest mutants a default chunk holds where the memory budget allows, however
#: wide the tiles: every node costs a chunk a fixed overhead (Python, kernel and
#: BLAS calls), and a deep model's narrow early layers need rows for their
#: GEMMs (BPNet-1000, 1.7 MiB of tiles per mutant, ran 5-10% slower at 9
#: mutants per chunk than at 16 to 24).
CPU_MIN_CHUNK = 16

#: Most mutants the cpu backend puts in one chunk: beyond a few thousand the
#: GEMMs are no faster and the tiles fall out of cache.
CPU_MAX_CHUNK = 4096
