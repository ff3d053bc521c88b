"""Peak resident memory of cpu-backend ISM over many sequences.

    python benchmarks/memory_cpu.py --model basset-1000 --n-seqs 100

Builds the model with Keras (peer environment), then runs ISM in a fresh
process that imports only ismkernel, and reports its peak resident set size.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = """
import resource, sys, time
import numpy as np
import ismkernel
model = ismkernel.load_model(sys.argv[1])
n = int(sys.argv[2])
seq_len = model.inputs[0].shape[0]
idx = np.random.default_rng(0).integers(0, 4, (n, seq_len))
x = np.eye(4, dtype=np.float32)[idx]
t0 = time.perf_counter()
res = ismkernel.ism(model, x, backend="cpu")
dt = time.perf_counter() - t0
out_bytes = sum(o.nbytes for o in res.outputs)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(peak, out_bytes, dt)
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="basset-1000")
    p.add_argument("--n-seqs", type=int, default=100)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    import models

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.model}.h5"
        models.build(args.model).save(path)
        line = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), str(args.n_seqs)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
    peak, out_bytes, seconds = int(line[0]), int(line[1]), float(line[2])
    result = dict(
        kind="memory",
        model=args.model,
        n_seqs=args.n_seqs,
        host=platform.node(),
        peak_rss_bytes=peak,
        result_array_bytes=out_bytes,
        seconds=seconds,
    )
    print(
        f"{args.model}, {args.n_seqs} sequences: peak RSS {peak / 2**30:.2f} GiB "
        f"(results themselves {out_bytes / 2**30:.2f} GiB), {seconds:.1f} s"
    )
    out = (
        args.out
        or Path(__file__).resolve().parent / "results" / f"memory-{args.model}.json"
    )
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
