"""Every Numba-CUDA kernel against its CPU counterpart, under the CUDA
simulator, on tiny inputs whose sizes leave the last thread block partial.

The simulator runs kernels thread by thread in Python on NumPy arrays, so it
checks indexing, bounds and arithmetic, not speed. It is switched on here,
before ``numba.cuda`` is first imported; in a session that already imported
``numba.cuda`` for a real device these tests run on that device instead.
Tests that need a real GPU are marked ``gpu`` and skip without one.
"""

from __future__ import annotations

import sys

import numba
import numpy as np
import pytest

if "numba.cuda" not in sys.modules:
    numba.config.ENABLE_CUDASIM = True

from ismkernel.backends.cpu import kernels as cpu  # noqa: E402
from ismkernel.backends.cuda import kernels as gpu  # noqa: E402
from ismkernel.backends.cuda.memory import probe  # noqa: E402

# Sizes: n_mut * width * n_ch below, at and above one block of THREADS.
SHAPES = [(1, 1, 1), (3, 5, 7), (2, 8, 8), (5, 9, 3)]


def _rng(seed):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("n_mut,width,n_ch", SHAPES)
def test_gather(n_mut, width, n_ch):
    rng = _rng(0)
    length, n_seqs, t_width = 12, 2, 3
    ref = rng.normal(size=(n_seqs, length, n_ch)).astype(np.float32)
    tile = rng.normal(size=(n_mut, t_width, n_ch)).astype(np.float32)
    seq = rng.integers(0, n_seqs, n_mut)
    start = rng.integers(-3, length, n_mut)  # windows may leave the sequence
    tile_start = rng.integers(0, length - t_width, n_mut)
    want = cpu.gather(tile, tile_start, ref, seq, start, width, pad=0.5)
    got = np.full((n_mut, width, n_ch), np.nan, np.float32)
    gpu.launch_gather(tile, tile_start, ref, seq, start, got, 0.5)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("is_max", [True, False])
@pytest.mark.parametrize("pool,stride,left", [(2, 2, 0), (3, 1, 1), (4, 3, 2)])
def test_pool_window(is_max, pool, stride, left):
    rng = _rng(2)
    n_mut, n_seqs, length, n_ch, width, t_width = 4, 2, 15, 6, 5, 4
    ref = rng.normal(size=(n_seqs, length, n_ch)).astype(np.float32)
    tile = rng.normal(size=(n_mut, t_width, n_ch)).astype(np.float32)
    seq = rng.integers(0, n_seqs, n_mut)
    tile_start = rng.integers(0, length - t_width, n_mut)
    # Every window overlaps the input (as in any plan): the last output row
    # starts before the end.
    top = (length - 1 + left) // stride - (width - 1)
    out_start = rng.integers(0, min(3, top + 1), n_mut)
    want = cpu.pool_window(
        tile, tile_start, ref, seq, out_start, width, pool, stride, left, is_max
    )
    got = np.zeros((n_mut, width, n_ch), np.float32)
    gpu.launch_pool_window(
        tile, tile_start, ref, seq, out_start, got, pool, stride, left, is_max
    )
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("stride,dilation,left", [(1, 1, 4), (2, 1, 3), (1, 3, 6)])
def test_lookup_add(stride, dilation, left):
    rng = _rng(3)
    n_mut, n_seqs, n_ch, width, n_taps, n_alts = 6, 2, 7, 5, 5, 4
    ref_out = rng.normal(size=(n_seqs, 20, n_ch)).astype(np.float32)
    alt_taps = rng.normal(size=(n_alts, n_taps, n_ch)).astype(np.float32)
    ref_taps = rng.normal(size=(n_alts, n_taps, n_ch)).astype(np.float32)
    seq = rng.integers(0, n_seqs, n_mut)
    alt = rng.integers(0, n_alts, n_mut)
    pair = rng.integers(0, n_alts, n_mut)
    pos = rng.integers(0, 12, n_mut)
    out_start = np.clip((pos + left) // stride - 3, 0, 15)
    args = (ref_out, seq, alt_taps, alt, ref_taps, pair, pos, out_start)
    want = cpu.lookup_add(*args, width, left, stride, dilation)
    got = np.zeros_like(want)
    gpu.launch_lookup_add(got, *args, left, stride, dilation)
    np.testing.assert_array_equal(got, want)


def test_unchanged():
    rng = _rng(4)
    n_mut, n_seqs, length, n_ch, width = 7, 2, 10, 3, 4
    ref = rng.normal(size=(n_seqs, length, n_ch)).astype(np.float32)
    seq = rng.integers(0, n_seqs, n_mut)
    tile_start = rng.integers(0, length - width, n_mut)
    tile = np.stack([ref[s, t : t + width] for s, t in zip(seq, tile_start)])
    tile[[1, 4], 2, 1] += 1e-3  # two mutants changed in one value
    want = cpu.unchanged(tile, tile_start, ref, seq)
    got = np.ones(n_mut, np.int8)
    gpu.launch_unchanged(tile, tile_start, ref, seq, got)
    np.testing.assert_array_equal(got.astype(bool), want)
    assert want.tolist() == [True, False, True, True, False, True, True]


@pytest.mark.gpu
def test_device_is_usable():
    ok, why = probe()
    if not ok:
        pytest.skip(f"needs a CUDA GPU: {why}")
    from ismkernel.backends.cuda.memory import free_bytes, to_device, to_host

    assert free_bytes() > 0
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(to_host(to_device(x)), x)
