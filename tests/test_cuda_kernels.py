"""Every kernel of the cuda device's table against the cpu kernel of the same
name, bit for bit, run three ways from the same bodies:

- ``emulated``: ``@njit`` loops over the grid (the ``cuda-emulated`` device);
- ``simulator``: the ``@cuda.jit`` kernels under Numba's CUDA simulator, with
  7 threads per block and sizes that leave the last block partial. The
  simulator must be chosen before ``numba.cuda`` is first imported, so
  :func:`test_every_kernel_under_the_simulator` runs these tests in a
  process of their own with ``NUMBA_ENABLE_CUDASIM=1``;
- ``device``: the kernels on a GPU, on a non-default stream (skipped, with
  the reason, where CuPy cannot reach one).

Outputs start as NaN, so an element a kernel fails to write shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ismkernel.backends import KERNELS
from ismkernel.backends.cpu import kernels as cpu
from ismkernel.backends.cuda import kernels as table

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
SIM_THREADS = 7

# (n_mut, width, n_ch): elements below, at and above whole blocks of 7 and 128.
SHAPES = [(1, 1, 1), (3, 5, 7), (2, 8, 8), (5, 9, 3)]


class Table:
    """A kernel table and how to move arrays to and from its device."""

    def __init__(self, kind: str):
        self.kind = kind
        if kind == "emulated":
            self.xp = np
            self.k = table.Kernels(np, table.grid_launcher())
            self.stream = None
        elif kind == "simulator":
            self.xp = np
            self.k = table.Kernels(np, table.device_launcher(0, SIM_THREADS))
            self.stream = None
        else:
            import cupy

            from ismkernel.backends.cuda import memory

            self.xp = cupy
            self.stream = cupy.cuda.Stream(non_blocking=True)
            self.k = table.Kernels(
                cupy, table.device_launcher(memory.numba_stream(self.stream))
            )

    def dev(self, a):
        if self.xp is np or a is None or not isinstance(a, np.ndarray):
            return a
        with self.stream:
            return self.xp.asarray(a)

    def nan(self, shape, dtype=np.float32):
        with self.stream if self.stream is not None else _nothing():
            return self.xp.full(shape, np.nan, dtype=dtype)

    def host(self, a):
        if self.xp is np:
            return a
        self.stream.synchronize()
        return self.xp.asnumpy(a)

    def call(self, name, *args, **kwargs):
        args = [self.dev(a) for a in args]
        kwargs = {k: self.dev(v) for k, v in kwargs.items()}
        with self.stream if self.stream is not None else _nothing():
            return getattr(self.k, name)(*args, **kwargs)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _device_reason() -> str:
    from ismkernel.backends.cuda.memory import probe

    ok, why = probe()
    return "" if ok else f"needs a CUDA GPU: {why}"


@pytest.fixture(scope="module", params=["emulated", "simulator", "device"])
def t(request) -> Table:
    kind = request.param
    if kind == "simulator" and not SIMULATED:
        pytest.skip("runs in its own process (test_every_kernel_under_the_simulator)")
    if kind == "device":
        if SIMULATED:
            pytest.skip("the simulator is on in this process")
        why = _device_reason()
        if why:
            pytest.skip(why)
    if kind == "emulated" and SIMULATED:
        pytest.skip("run in the main test process")
    return Table(kind)


def _rng(seed):
    return np.random.default_rng(seed)


def _same(comp, ref):
    np.testing.assert_array_equal(comp, ref, strict=True)


def test_the_table_has_every_kernel():
    k = table.Kernels(np, table.grid_launcher())
    for name in KERNELS:
        assert callable(getattr(k, name)), name


@pytest.mark.parametrize("n_mut,width,n_ch", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gather_and_change(t, n_mut, width, n_ch, dtype):
    rng = _rng(width)
    length, n_seqs, t_width = 12, 2, 3
    ref = rng.normal(size=(n_seqs, length, n_ch)).astype(dtype)
    tile = rng.normal(size=(n_mut, t_width, n_ch)).astype(dtype)
    seq = rng.integers(0, n_seqs, n_mut)
    start = rng.integers(-3, length, n_mut)  # windows may leave the sequence
    tile_start = rng.integers(-2, length - 1, n_mut)
    ref_out = cpu.gather(tile, tile_start, ref, seq, start, width, pad=0.5)
    comp = t.call(
        "gather",
        tile,
        tile_start,
        ref,
        seq,
        start,
        width,
        0.5,
        t.nan(ref_out.shape, dtype),
    )
    _same(t.host(comp), ref_out)
    comp = t.call("gather", None, None, ref, seq, start, width)
    _same(t.host(comp), cpu.gather(None, None, ref, seq, start, width))
    acc = rng.normal(size=ref_out.shape).astype(dtype)
    want = acc.copy()
    cpu.gather(tile, tile_start, ref, seq, start, width, out=want, add=True)
    comp = t.call("gather", tile, tile_start, ref, seq, start, width, out=acc, add=True)
    _same(t.host(comp), want)
    # the change and its sums, with windows past both ends
    _same(
        t.host(t.call("change", tile, tile_start, ref, seq, t.nan(tile.shape, dtype))),
        cpu.change(tile, tile_start, ref, seq),
    )
    _same(
        t.host(t.call("change_sum", tile, tile_start, ref, seq)),
        cpu.change_sum(tile, tile_start, ref, seq),
    )
    _same(t.host(t.call("sum_rows", tile)), cpu.sum_rows(tile))


def test_exact_zero_tests(t):
    rng = _rng(4)
    n_mut, n_seqs, length, n_ch, width = 7, 2, 10, 3, 4
    ref = rng.normal(size=(n_seqs, length, n_ch)).astype(np.float32)
    seq = rng.integers(0, n_seqs, n_mut)
    tile_start = rng.integers(0, length - width, n_mut)
    tile = np.stack([ref[s, p : p + width] for s, p in zip(seq, tile_start)])
    tile[[1, 4], 2, 1] += 1e-3  # two mutants changed in one value
    tile[6, 3, 2] = np.nan  # a NaN is a change
    want = cpu.unchanged(tile, tile_start, ref, seq)
    assert want.tolist() == [True, False, True, True, False, True, False]
    _same(t.host(t.call("unchanged", tile, tile_start, ref, seq)), want)
    change = cpu.change(tile, tile_start, ref, seq)
    change[3, 0, 0] = -0.0  # minus zero is zero
    _same(t.host(t.call("all_zero", change)), cpu.all_zero(change))
    _same(t.host(t.call("all_zero", change)), want)


def test_relu(t):
    special = [np.nan, -np.inf, np.inf, -0.0, 0.0, -1.5, 2.5, -1e-45, 3e-39]
    for dtype in (np.float32, np.float64):
        x = np.array(special * 15, dtype=dtype).reshape(5, 3, -1)  # 135 elements
        want = cpu.relu(x.copy())
        _same(t.host(t.call("relu", x.copy())), want)
        strided = t.dev(x.copy())[:, :, ::2]  # not contiguous: in place all the same
        assert t.call("relu", strided) is strided
        np.testing.assert_array_equal(t.host(strided), want[:, :, ::2])


def test_running_max(t):
    """What global max pooling reads: ``np.maximum.accumulate`` along rows,
    through the device's array module (CuPy has no such ufunc method)."""
    from ismkernel.backends.cuda.kernels import ArrayModule

    rng = _rng(5)
    x = rng.normal(size=(3, 9, 5)).astype(np.float32)
    x[1, 4, 2] = np.nan
    x[2, 0, 0] = -np.inf
    want = np.maximum.accumulate(x, axis=1)
    _same(t.host(t.call("running_max", x)), want)
    xp = ArrayModule(t.xp, t.k)
    out = t.nan((3, 10, 5))
    xp.maximum.accumulate(t.dev(x), axis=1, out=out[:, 1:])  # as the walker asks
    _same(t.host(out)[:, 1:], want)


@pytest.mark.parametrize("is_max", [True, False])
@pytest.mark.parametrize("pool,stride,left", [(2, 2, 0), (3, 1, 1), (4, 3, 2)])
def test_pool_window(t, is_max, pool, stride, left):
    rng = _rng(2)
    n_mut, n_seqs, length, n_ch, width, t_width = 4, 2, 15, 6, 5, 4
    ref = rng.normal(size=(n_seqs, length, n_ch)).astype(np.float32)
    ref[0, 3, :2] = [np.nan, -0.0]
    tile = rng.normal(size=(n_mut, t_width, n_ch)).astype(np.float32)
    seq = rng.integers(0, n_seqs, n_mut)
    tile_start = rng.integers(0, length - t_width, n_mut)
    # Every window overlaps the input (as in any plan).
    top = (length - 1 + left) // stride - (width - 1)
    out_start = rng.integers(0, min(3, top + 1), n_mut)
    args = (tile, tile_start, ref, seq, out_start, width, pool, stride, left, is_max)
    want = cpu.pool_window(*args)
    comp = t.call("pool_window", *args, t.nan(want.shape))
    _same(t.host(comp), want)


@pytest.mark.parametrize("stride,dilation,left", [(1, 1, 4), (2, 1, 3), (1, 3, 6)])
def test_lookup_add(t, stride, dilation, left):
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
    comp = t.call("lookup_add", *args, width, left, stride, dilation, t.nan(want.shape))
    _same(t.host(comp), want)


EPILOGUES = [
    (relu, residual, emit, sums)
    for relu in (False, True)
    for residual in (None, "values", "change", "reference")
    for emit in (0, 1, 2)
    for sums in (False, True)
    if emit or not sums
]


@pytest.mark.parametrize("n_ch", [3, 8])
@pytest.mark.parametrize("stride,dilation,left", [(1, 1, 2), (1, 4, 4), (2, 1, 1)])
def test_col2im_ref_with_every_epilogue(t, n_ch, stride, dilation, left):
    """The fused col2im with each combination of ReLU, residual (its values,
    its change, or its reference only), the result's change (beside the
    values or in their place) and the change's row sums."""
    rng = _rng(n_ch + dilation)
    length, n_mut, w_in, width, n_taps = 30, 5, 7, 6, 3
    ref = rng.standard_normal((2, length, n_ch)).astype(np.float32)
    res_ref = rng.standard_normal((2, length, n_ch)).astype(np.float32)
    seq = rng.integers(0, 2, n_mut)
    in_start = rng.integers(-3, length - w_in + 3, n_mut)
    out_start = rng.integers(0, length - width + 1, n_mut)
    taps = rng.standard_normal((n_mut, w_in, n_taps, n_ch)).astype(np.float32)
    taps[0, 1, 0, 0] = np.nan
    res_start = out_start + 2  # covers part of the output window
    res_tile = rng.standard_normal((n_mut, width - 3, n_ch)).astype(np.float32)
    for relu, residual, emit, sums in EPILOGUES:
        results = []
        for side in ("cpu", "table"):
            out = np.full((n_mut, width, n_ch), np.nan, np.float32)
            chg = (
                None if emit == 0 else (out if emit == 2 else np.full_like(out, np.nan))
            )
            s = np.zeros((n_mut, n_ch), np.float32) if sums else None
            res = {
                None: None,
                "values": (res_tile, res_start, res_ref, False),
                "change": (res_tile, res_start, res_ref, True),
                "reference": (None, out_start, res_ref, False),
            }[residual]
            args = (out, ref, seq, out_start, taps, in_start, left, stride, dilation)
            if side == "cpu":
                cpu.col2im_ref(*args, relu, res, chg, s)
                results.append((out, chg, s))
            else:
                out_d = t.dev(out)
                chg_d = None if chg is None else (out_d if emit == 2 else t.dev(chg))
                res_d = None if res is None else tuple(t.dev(a) for a in res)
                s_d = t.dev(s)
                t.call("col2im_ref", out_d, *args[1:], relu, res_d, chg_d, s_d)
                results.append(
                    tuple(None if a is None else t.host(a) for a in (out_d, chg_d, s_d))
                )
        for a, b in zip(*results):
            if a is not None:
                _same(b, a), (relu, residual, emit, sums)


def test_col2im_sums_need_the_change(t):
    out = np.zeros((1, 2, 3), np.float32)
    idx = np.zeros(1, np.int64)
    taps = np.zeros((1, 2, 1, 3), np.float32)
    with pytest.raises(ValueError, match="sums of the change need the change"):
        t.call(
            "col2im_ref",
            out,
            out,
            idx,
            idx,
            taps,
            idx,
            0,
            1,
            1,
            sums=np.zeros((1, 3), np.float32),
        )


@pytest.mark.skipif(SIMULATED, reason="this process is the simulator's")
def test_every_kernel_under_the_simulator():
    """The tests above, ``simulator`` case, in a process of their own."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    here = Path(__file__).parent
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(Path(__file__)),
            "-k",
            "simulator and not under_the_simulator",
        ],
        cwd=here.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = (run.stdout + run.stderr)[-3000:]
    assert run.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail, tail
