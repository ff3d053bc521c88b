"""A against B: one git revision's cpu backend against another's, in one
sitting, alternating them, on fastISM's benchmark models.

Run in the peer environment (``benchmarks/requirements.txt``; TensorFlow
builds the models once)::

    python benchmarks/bench_ab.py --base HEAD~3 --this HEAD --models basset-1000 bpnet-1000

Both revisions are checked out in temporary git worktrees; the models are
built by the base revision's ``benchmarks/models.py``, so both can run them.
Every timing is
a fresh process (``--worker``) that imports one side's ``ismkernel`` first on
``sys.path``, warms up (JIT, first calls), then times full ISM (every
position, the three other bases) on the same sequences, best of
``--repeat``. Rounds alternate which side goes first, so drifts of a shared
host fall on both. Each worker also prints a digest of its outputs; the
sides must agree bit for bit unless ``--allow-differences`` is given.
Results go to ``benchmarks/results/ab-<host>.json``: per model the seconds
per sequence of every run, the medians, and the ratio base over this
revision (above 1: this one is faster).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def _worker(args) -> None:
    """Time one side (its ismkernel is first on sys.path) and print JSON."""
    import numpy as np

    import ismkernel

    model = ismkernel.load_model(args.model_file)
    seq_len = model.inputs[0].shape[0]
    idx = np.random.default_rng(0).integers(0, 4, (args.n_seqs, seq_len))
    x = np.eye(4, dtype=np.float32)[idx]
    ismkernel.ism(model, x[:1], positions=slice(0, 64), backend="cpu")  # warm
    best, res = np.inf, None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        res = ismkernel.ism(model, x, backend="cpu")
        best = min(best, time.perf_counter() - t0)
    digest = hashlib.sha256()
    for out in res.outputs:
        digest.update(np.ascontiguousarray(out).tobytes())
    print(
        json.dumps(
            dict(
                ismkernel=str(Path(ismkernel.__file__).parent.parent),
                seconds_per_seq=best / args.n_seqs,
                digest=digest.hexdigest(),
                n_mutants=res.stats["n_mutants"],
            )
        )
    )


def _run_side(tree: Path, model_file: Path, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--model-file",
        str(model_file),
        "--n-seqs",
        str(args.n_seqs),
        "--repeat",
        str(args.repeat),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"worker for {tree} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if Path(result["ismkernel"]).resolve() != tree.resolve():
        raise SystemExit(f"worker imported {result['ismkernel']}, not {tree}")
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="HEAD~1", help="git revision to compare with")
    p.add_argument("--this", default="HEAD", help="git revision under test")
    p.add_argument("--models", nargs="+", default=["basset-1000", "bpnet-1000"])
    p.add_argument("--n-seqs", type=int, default=4)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--allow-differences", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return

    rev = subprocess.run(
        ["git", "rev-parse", args.base], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    head = subprocess.run(
        ["git", "rev-parse", args.this], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    report = dict(
        base=rev,
        this=head,
        host=platform.node(),
        n_seqs=args.n_seqs,
        repeat=args.repeat,
        rounds=args.rounds,
        models={},
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sides = {"base": tmp / "base", "this": tmp / "this"}
        for side, commit in (("base", rev), ("this", head)):
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(sides[side]), commit],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
        try:
            # The models as the base revision builds them, so both sides can
            # run them (a later revision may read layers an earlier cannot).
            sys.path.insert(0, str(sides["base"] / "benchmarks"))
            import models

            report["models_of"] = rev
            for name in args.models:
                path = tmp / f"{name}.h5"
                models.build(name).save(path)
                runs: dict[str, list] = {"base": [], "this": []}
                digests: dict[str, set] = {"base": set(), "this": set()}
                for r in range(args.rounds):
                    order = ("base", "this") if r % 2 == 0 else ("this", "base")
                    for side in order:
                        res = _run_side(sides[side], path, args)
                        runs[side].append(res["seconds_per_seq"])
                        digests[side].add(res["digest"])
                        print(
                            f"{name} round {r} {side}: "
                            f"{res['seconds_per_seq']:.3f} s/seq",
                            flush=True,
                        )
                same = digests["base"] == digests["this"] and len(digests["this"]) == 1
                med = {s: statistics.median(v) for s, v in runs.items()}
                report["models"][name] = dict(
                    seconds_per_seq=runs,
                    median=med,
                    ratio_base_over_this=med["base"] / med["this"],
                    bit_identical=same,
                )
                print(
                    f"{name}: base {med['base']:.3f}, this {med['this']:.3f} s/seq; "
                    f"this tree runs at {med['base'] / med['this']:.3f}x the base; "
                    f"outputs {'bit-identical' if same else 'DIFFER'}",
                    flush=True,
                )
                if not same and not args.allow_differences:
                    raise SystemExit(f"{name}: the two sides' outputs differ")
        finally:
            for tree in sides.values():
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(tree)],
                    cwd=ROOT,
                    capture_output=True,
                )
    RESULTS.mkdir(exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / f"ab-{platform.node()}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
