"""What a benchmark result records about the machine it ran on."""

from __future__ import annotations

import os
import platform

import numpy as np

import ismkernel


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> list[dict]:
    """The BLAS libraries loaded (NumPy's, and SciPy's that ismkernel's
    kernels call), with the kernel each runs: ``OPENBLAS_CORETYPE`` can hold
    OpenBLAS to an older core's kernels than the CPU has."""
    import scipy.linalg.cython_blas  # noqa: F401  (load it to list it)
    from threadpoolctl import threadpool_info

    return [
        dict(
            library=os.path.basename(lib["filepath"]),
            version=lib.get("version"),
            architecture=lib.get("architecture"),
        )
        for lib in threadpool_info()
        if lib.get("user_api") == "blas"
    ]


def machine_info() -> dict:
    """Host, CPU, cores, BLAS and the versions that decide the timings."""
    import numba
    import scipy

    return dict(
        host=platform.node(),
        cpu=_cpu_model(),
        cores=os.cpu_count(),
        python=platform.python_version(),
        numpy=np.__version__,
        scipy=scipy.__version__,
        numba=numba.__version__,
        ismkernel=ismkernel.__version__,
        blas=blas_info(),
        openblas_coretype=os.environ.get("OPENBLAS_CORETYPE"),
    )


def write_result(result: dict, out) -> None:
    """A benchmark's JSON, and where it went."""
    import json
    from pathlib import Path

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
