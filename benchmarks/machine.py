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
