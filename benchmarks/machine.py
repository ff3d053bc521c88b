"""What a benchmark result records about the machine it ran on."""

from __future__ import annotations

import os
import platform

import numpy as np

import ismkernel


def machine_info() -> dict:
    """Host, CPU, cores and the versions that decide the timings."""
    return dict(
        host=platform.node(),
        cpu=platform.processor() or platform.machine(),
        cores=os.cpu_count(),
        python=platform.python_version(),
        numpy=np.__version__,
        ismkernel=ismkernel.__version__,
    )


def write_result(result: dict, out) -> None:
    """A benchmark's JSON, and where it went."""
    import json
    from pathlib import Path

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
