"""The ``cuda`` backend (in progress): Numba-CUDA kernels for the non-GEMM
work of the plan, and the device-memory helpers. The executor that runs a
plan on the device is not part of this version; ``backend="cuda"`` says so.

Importing this package imports neither CuPy nor ``numba.cuda``; the kernels
live in :mod:`ismkernel.backends.cuda.kernels` and the only module that
imports CuPy is :mod:`ismkernel.backends.cuda.memory`.
"""
