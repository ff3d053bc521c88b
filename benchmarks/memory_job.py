"""Peak resident memory of ``ismkernel ism`` jobs, one reducer against another.

    python benchmarks/memory_job.py --n-seqs 2000 --reduce raw l2
    python benchmarks/memory_job.py --model-file bpnet-1000.h5 --n-seqs 100 \
        --positions 0:100

Writes a FASTA of random sequences of the bundled example model's length,
then runs ``ismkernel ism`` on it once per reducer, each in a fresh process,
and reports each run's peak resident set size and the results file's size.
A reducer over the alternatives (``l2``) is computed by the engine's sink as
chunks finish, so it never holds a full ``(n, P, A, *out)`` array: its peak
should stay below that of ``raw``, which keeps them all. Needs only
ismkernel. Results go to ``benchmarks/results/memory-job-<host>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info  # noqa: E402

import ismkernel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

CHILD = """
import resource, sys
from ismkernel.cli import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, code)
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-seqs", type=int, default=2000)
    p.add_argument("--reduce", nargs="+", default=["raw", "l2"])
    p.add_argument("--model-file", default=None, help="default: the bundled example")
    p.add_argument("--positions", default=None, metavar="START:END")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    model_file = args.model_file or ismkernel.EXAMPLE_MODEL
    model = ismkernel.load_model(model_file)
    length = model.inputs[0].shape[0]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "seqs.fa"
        rng = np.random.default_rng(0)
        letters = np.array(list("ACGT"))
        with open(fasta, "w") as f:
            for i in range(args.n_seqs):
                f.write(f">s{i}\n{''.join(letters[rng.integers(0, 4, length)])}\n")
        for kind in args.reduce:
            out = Path(tmp) / f"{kind}.h5"
            cmd = [
                model_file,
                str(fasta),
                "-o",
                str(out),
                "--reduce",
                kind,
            ] + (["--positions", args.positions] if args.positions else [])
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, "ism", *cmd, "-q"],
                capture_output=True,
                text=True,
            )
            if proc.returncode:
                raise SystemExit(f"ismkernel ism --reduce {kind}:\n{proc.stderr}")
            line = proc.stdout.split()
            seconds = time.perf_counter() - t0
            peak, code = int(line[0]), int(line[1])
            if code:
                raise SystemExit(f"ismkernel ism --reduce {kind}:\n{proc.stderr}")
            runs[kind] = dict(
                peak_rss_bytes=peak,
                peak_rss_gib=peak / 2**30,
                file_bytes=os.path.getsize(out),
                seconds=seconds,
            )
            print(f"--reduce {kind}: peak RSS {peak / 2**20:.0f} MiB", flush=True)
    result = dict(
        kind="memory-job",
        model="example (bundled)" if args.model_file is None else Path(model_file).name,
        positions=args.positions,
        n_seqs=args.n_seqs,
        seq_len=length,
        machine=machine_info(),
        runs=runs,
        self_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    RESULTS.mkdir(exist_ok=True)
    path = args.out or RESULTS / f"memory-job-{platform.node()}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
