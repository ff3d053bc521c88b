"""CPU benchmark: ismkernel's cpu backend against its reference backend,
fastISM and naive PyTorch ISM, on fastISM's benchmark models.

Run in an environment with ``benchmarks/requirements.txt`` (see
benchmarks/README.md)::

    python benchmarks/bench_cpu.py --models basset-1000 bpnet-1000

For each model it first checks the cpu backend against the reference backend
on a sample of positions (edges included) and stops on a mismatch; then it
times full ISM (all positions, the three other bases) per sequence, warm, and
the peers in the same run: the reference backend, fastISM and naive PyTorch,
each on every 4th position (``--peer-every``) at the best batch size of a
sweep. The JSON records that protocol. Results go to
``benchmarks/results/cpu-<host>.json``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402
import peers  # noqa: E402
from machine import machine_info, write_result  # noqa: E402

import ismkernel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def sgemm_rate(n: int = 4096, repeat: int = 5) -> float:
    """FLOP/s of a large float32 matrix multiply through NumPy's BLAS (best of
    ``repeat``, as the ISM timings are)."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def one_hot(n: int, seq_len: int, seed: int = 0) -> np.ndarray:
    idx = np.random.default_rng(seed).integers(0, 4, (n, seq_len))
    return np.eye(4, dtype=np.float32)[idx]


def check_exact(model, x: np.ndarray) -> float:
    """Max |cpu - reference| over max |output| on a sample of positions."""
    seq_len = x.shape[1]
    rng = np.random.default_rng(1)
    pos = np.unique(
        np.r_[0, 1, seq_len // 2, seq_len - 2, seq_len - 1, rng.integers(0, seq_len, 5)]
    )
    ref = ismkernel.ism(model, x, positions=pos, backend="reference")
    cpu = ismkernel.ism(model, x, positions=pos, backend="cpu")
    err = 0.0
    for a, b in zip(ref.outputs, cpu.outputs):
        err = max(err, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)))
    return err


def bench_model(name: str, args, workdir: Path) -> dict:
    keras_model = models.build(name)
    path = workdir / f"{name}.h5"
    keras_model.save(path)
    model = ismkernel.load_model(path)
    seq_len = model.inputs[0].shape[0]
    x = one_hot(args.n_seqs, seq_len)
    out = dict(model=name, seq_len=seq_len, n_params=model.n_params, n_seqs=args.n_seqs)

    err = check_exact(model, x[:2])
    out["check_rel_err"] = err
    if not err <= 1e-4:
        raise SystemExit(
            f"{name}: cpu differs from reference by {err:.2e} x max|output|"
        )

    from ismkernel.plan import build_plan

    g = model.graph
    plan = build_plan(g, g.inputs[0], {g.inputs[0]: (seq_len, 4)}, np.arange(seq_len))
    out.update(
        flops_naive_per_mutant=plan.flops_naive,
        flops_plan_per_mutant=plan.flops_plan,
        ceiling=plan.ceiling,
    )

    ismkernel.ism(model, x[:1], positions=slice(0, 64), backend="cpu")  # warm
    dt = np.inf
    for _ in range(args.repeat):  # best of the repeats: the host is shared
        t0 = time.perf_counter()
        res = ismkernel.ism(model, x, backend="cpu")
        dt = min(dt, time.perf_counter() - t0)
    rate = sgemm_rate()
    out["sgemm_flops_per_second"] = rate
    n_mut = res.stats["n_mutants"]
    out["cpu"] = dict(
        seconds_per_seq=dt / args.n_seqs,
        mutants_per_second=n_mut / dt,
        plan_flops_per_second=plan.flops_plan * n_mut / dt,
        chunk_size=res.stats["chunk_size"],
        n_early_exit=res.stats["n_early_exit"],
        seconds_by_node={
            k: v / args.n_seqs
            for k, v in sorted(res.stats["seconds"].items(), key=lambda kv: -kv[1])
        },
    )

    # The peers (the reference backend too) on every n-th position, scaled to
    # the full sequence, each at the best batch size of its sweep.
    pos = peers.every_nth(seq_len, args.peer_every)
    xp = x[: args.peer_seqs]
    r = peers.time_reference(model, xp, args.ref_batches, pos)
    out["reference"] = r
    out["speedup_over_reference"] = r["seconds_per_seq"] / out["cpu"]["seconds_per_seq"]

    if "fastism" in args.peers:
        f = peers.time_fastism(keras_model, x, args.fastism_batches, pos)
        f["ratio"] = f["seconds_per_seq"] / out["cpu"]["seconds_per_seq"]
        out["fastism"] = f
    if "torch" in args.peers:
        t = peers.time_torch(model, xp, args.torch_batches, pos)
        t["ratio"] = t["seconds_per_seq"] / out["cpu"]["seconds_per_seq"]
        out["torch"] = t
    return out


def protocol(args) -> dict:
    """How each timing was taken, for the JSON."""
    every = (
        f"every {args.peer_every}th position from 0"
        if args.peer_every > 1
        else "every position"
    )
    return dict(
        cpu=(
            f"ismkernel cpu backend: full ISM (all positions, the three other "
            f"bases) of {args.n_seqs} sequences, warm, best of {args.repeat} runs"
        ),
        peers=(
            f"{every}, scaled by seq_len / positions timed; each peer at the "
            "best batch size of its sweep, warm (the first call of each batch "
            "size is not timed)"
        ),
        reference=(
            f"ismkernel reference backend, naive ISM of {args.peer_seqs} "
            f"sequences, batch sizes (mutants per pass) {args.ref_batches}"
        ),
        fastism=(
            "fastISM 0.5.1, FastISM(change_ranges=the timed positions); four "
            "calls (replace_with each base) of b sequences, b in "
            f"{args.fastism_batches}"
        ),
        torch=(
            f"naive batched ISM in PyTorch of {args.peer_seqs} sequences (the "
            "module checked against Model.predict first), batch sizes "
            f"(mutants per pass) {args.torch_batches}"
        ),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models", nargs="+", default=list(models.MODELS), choices=list(models.MODELS)
    )
    p.add_argument("--n-seqs", type=int, default=4, help="sequences timed per model")
    p.add_argument("--peers", nargs="*", default=["fastism", "torch"])
    p.add_argument("--fastism-batches", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--torch-batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--ref-batches", type=int, nargs="+", default=[64, 256])
    p.add_argument(
        "--peer-every",
        type=int,
        default=4,
        help="peers are timed on every n-th position (scaled to the full length)",
    )
    p.add_argument(
        "--peer-seqs",
        type=int,
        default=2,
        help="sequences the reference and PyTorch are timed on",
    )
    p.add_argument(
        "--repeat", type=int, default=2, help="timed runs of the cpu backend (best)"
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    machine = machine_info()
    if machine["openblas_coretype"]:
        print(
            f"note: OPENBLAS_CORETYPE={machine['openblas_coretype']} holds OpenBLAS "
            "to that core's kernels (BLAS: "
            + ", ".join(str(b["architecture"]) for b in machine["blas"])
            + "); unset it to time this CPU's own",
            flush=True,
        )
    rate = sgemm_rate()
    if args.peer_every > 4:
        raise SystemExit("--peer-every above 4 would overstate each call's fixed cost")
    result = dict(
        kind="cpu",
        machine=machine,
        sgemm_flops_per_second=rate,
        protocol=protocol(args),
        argv=sys.argv[1:] if argv is None else list(argv),
        models=[],
    )
    print(f"float32 GEMM (NumPy BLAS): {rate / 1e9:.1f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            r = bench_model(name, args, Path(tmp))
            # The GEMM rate measured next to this model's timing, or the
            # run's first measurement, whichever is higher.
            peak = max(rate, r["sgemm_flops_per_second"])
            r["fraction_of_sgemm"] = r["cpu"]["plan_flops_per_second"] / peak
            result["models"].append(r)
            line = (
                f"{name}: {r['cpu']['seconds_per_seq']:.3f} s/seq, "
                f"{r['cpu']['mutants_per_second']:.0f} mutants/s, ceiling {r['ceiling']:.1f}x, "
                f"{r['fraction_of_sgemm']:.0%} of sgemm, "
                f"{r['speedup_over_reference']:.1f}x over reference"
            )
            for peer in ("fastism", "torch"):
                if peer in r:
                    line += (
                        f", {peer} {r[peer]['seconds_per_seq']:.2f} s/seq "
                        f"(batch {r[peer]['best_batch']}) = {r[peer]['ratio']:.1f}x"
                    )
            print(line, flush=True)
    write_result(result, args.out or RESULTS / f"cpu-{platform.node() or 'host'}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
