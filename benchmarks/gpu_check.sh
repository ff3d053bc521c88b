#!/usr/bin/env bash
# Validate and time the cuda backend on a lent GPU in one go, within six
# minutes; results under $OUT (at most 3 files: gpu_check.json, the kernel
# tests' output and this script's log). See benchmarks/gpu_check.py.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh            # on a GPU
#   OUT=/some/dir bash benchmarks/gpu_check.sh --simulate --tiny   # CI, no GPU
#
# Needs numpy, scipy, numba, numba-cuda, cupy, h5py, threadpoolctl, tqdm and
# pytest (PyTorch for the peer); ismkernel is imported from this checkout.
# PYTHON names the interpreter (default: python on the PATH).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The deadline: the script stops its steps at 330 s and is killed at 355 s,
# so the whole run ends within six minutes whatever happens.
timeout --signal=TERM --kill-after=5 355 \
    "${PYTHON:-python}" benchmarks/gpu_check.py --out "$OUT" --deadline 330 "$@" 2>&1 \
    | tee "$OUT/log.txt"
status=${PIPESTATUS[0]}
echo "gpu_check: exit $status; results in $OUT"
exit "$status"
