"""The ``cpu`` backend: incremental ISM with NumPy (BLAS) and Numba kernels."""

from ismkernel.backends.cpu.executor import CpuRun, cpu_ism

__all__ = ["CpuRun", "cpu_ism"]
