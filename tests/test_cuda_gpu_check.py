"""``benchmarks/gpu_check.sh --simulate --tiny``: the script a lent GPU runs,
run here with no GPU (the emulated device, the kernels under the simulator),
so it is known to work before a GPU is at hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_simulated(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--simulate", "--tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["gpu_check.json", "kernel_tests.txt", "log.txt"]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = result["steps"]
    assert list(steps) == [
        "environment",
        "kernel_tests",
        "parity",
        "ceilings",
        "timings",
        "peer",
    ]
    assert all(s["status"] == "ok" for s in steps.values()), steps
    assert set(steps["timings"]) >= {"basset-1000", "bpnet-1000", "beluga-2000"}
    assert all(v["status"].startswith("pending") for v in result["targets"].values())
    assert result["elapsed_s"] < 360
