"""Every device kernel compiles to PTX for compute capability 9.0 (H100,
H200) with no GPU present, for every argument type the walker and the
kernel tests pass it, and the float32 kernels hold no float64 instruction
(in compiled code a float32 times an int is float64, which the simulator
hides). Needs numba-cuda with the NVVM wheels (``pip install ".[ptx]"``); the
compilation runs in a process of its own, where ``numba.cuda`` is the real
target whatever this process chose."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys

import numba
import numpy as np
import pytest
import test_cuda_kernels as kt
from conftest import fixture_data, fixture_inputs, fixture_path

import ismkernel
from ismkernel.backends import get_backend
from ismkernel.backends.cuda import kernels as table

CHILD = r"""
import json, pickle, sys
from ismkernel.backends.cuda.ptx import compile_kernel, float64_instructions
out = []
for name, types in pickle.load(open(sys.argv[1], "rb")):
    ptx = compile_kernel(name, types, cc=(9, 0))
    out.append(dict(target=".target sm_90" in ptx, f64=float64_instructions(ptx)[:5]))
json.dump(out, open(sys.argv[2], "w"))
"""


def _float32(types) -> bool:
    return not any("float64" in str(t) for t in types)


def _record() -> list[tuple[str, tuple]]:
    """Argument types of every launch made by the kernel tests (emulated) and
    by ISM of three fixtures on the emulated device."""
    seen: dict[tuple, None] = {}
    grid = table.grid_launcher()

    def launch(name, n, *args):
        seen[(name, tuple(numba.typeof(a) for a in (n, *args)))] = None
        grid(name, n, *args)

    t = kt.Table("emulated")
    t.k.launch = launch
    for shape in kt.SHAPES[1:2]:
        for dtype in (np.float32, np.float64):
            kt.test_gather_and_change(t, *shape, dtype)
    kt.test_exact_zero_tests(t)
    kt.test_relu(t)
    kt.test_running_max(t)
    kt.test_pool_window(t, True, 3, 1, 1)
    kt.test_pool_window(t, False, 3, 1, 1)
    kt.test_lookup_add(t, 2, 1, 3)
    kt.test_col2im_ref_with_every_epilogue(t, 8, 1, 1, 2)
    dev = get_backend("cuda-emulated")
    real = dev.kernels.launch
    dev.kernels.launch = launch
    try:
        for name in ("bpnet_mini.k3.keras", "basset_mini.k3.keras"):
            model = ismkernel.load_model(fixture_path(name))
            x = fixture_inputs(fixture_data(name), "onehot")[0]
            for early_exit in (False, True):
                ismkernel.ism(model, x, backend="cuda-emulated", early_exit=early_exit)
    finally:
        dev.kernels.launch = real
    return list(seen)


@pytest.mark.skipif(
    importlib.util.find_spec("numba_cuda") is None,
    reason='needs numba-cuda and the NVVM wheels: pip install ".[ptx]"',
)
def test_every_kernel_compiles_for_sm90_with_no_float64_in_float32_kernels(tmp_path):
    sigs = _record()
    assert {name for name, _ in sigs} == set(table.BODIES)
    src = tmp_path / "sigs.pkl"
    src.write_bytes(pickle.dumps(sigs))
    dst = tmp_path / "ptx.json"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(src), str(dst)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    results = json.loads(dst.read_text())
    assert len(results) == len(sigs)
    for (name, types), res in zip(sigs, results):
        assert res["target"], (name, types)
        if _float32(types):
            assert not res["f64"], (name, types, res["f64"])
    assert {name for name, types in sigs if _float32(types)} == set(table.BODIES)
    # the float64 kernels were compiled too, and the check sees their float64
    assert any(res["f64"] for (_, t), res in zip(sigs, results) if not _float32(t))
