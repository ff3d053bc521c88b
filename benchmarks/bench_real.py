"""Real published models: SpliceAI's five Keras 2.0.5 models (the ``spliceai``
wheel, fetched and cached by ``tests/spliceai_models.py``), against Keras's
own naive batched prediction in the same run.

    python benchmarks/bench_real.py --out benchmarks/results/real-2core.json
    python benchmarks/bench_real.py --table benchmarks/results/real-2core.json

Run it where TensorFlow and tf-keras are installed beside ismkernel
(``benchmarks/requirements.txt``). Three cases:

``ism-1``, ``ism-5``
    ISM of the 500 central positions of a 10,500-long window (the positions
    of the model's 500 outputs; every mutant changes most of them), with one
    model and with the five-model ensemble (outputs averaged, as the
    package does). The window is the test fixture's: random bases with
    planted exons, its first 300 rows N.
``variants-5``
    SNV scoring as the package scores SNVs: each variant in a 10,101-long
    window centred on it (``-D 50``: 101 output rows, ±50 around the
    variant), the five models averaged, SpliceAI's delta scores
    (``reduce="spliceai"``). The genome is synthetic (random bases with
    planted exons); the variants are random SNVs.

Each case is first checked against the reference backend (a sample of
positions or variants) and stops on a mismatch. Then ismkernel's cpu backend
is timed (warm: kernels compiled, plans built), then Keras: ``predict`` on
explicit mutants (the three other bases at each position; ISM) or on the
reference and alternative windows of each variant (the package's two
predictions per variant and model), at the best batch size of a sweep. Keras
is timed on every ``--keras-every``-th position and on ``--time-variants``
variants, and ismkernel on the same variants, each scaled to the whole case:
one mutant's or one variant's cost does not depend on which it is. Keras's
outputs are also compared with ismkernel's on what both computed. The JSON
records seconds, ratios, the plan's FLOP ceilings and this protocol.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "tests" / "fixtures"))

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import make_spliceai_fixtures as fixture  # noqa: E402
from bench_variants import windows, write_fasta, write_snvs  # noqa: E402
from machine import machine_info, write_result  # noqa: E402
from spliceai_models import VERSION, spliceai_models  # noqa: E402

import ismkernel  # noqa: E402
from ismkernel.ensemble import Ensemble  # noqa: E402
from ismkernel.io.genome import Genome, read_vcf  # noqa: E402
from ismkernel.ism import EnsembleRun, IsmRun, fix_length  # noqa: E402
from ismkernel.variants import score_variants  # noqa: E402

RESULTS = HERE / "results"
FLANK = 5_000  # rows SpliceAI crops either side
WINDOW = 10_101  # the package's window for -D 50
EYE = np.eye(4, dtype=np.float32)


def _check(name: str, err: float, limit: float) -> None:
    print(f"check {name}: {err:.2e} (limit {limit:.0e})", flush=True)
    if not err <= limit:
        raise SystemExit(f"{name}: ismkernel differs by {err:.2e} > {limit:.0e}")


def ism_error(comp, ref) -> float:
    """Max |cpu - reference| over max |output| of two ISM results."""
    scale = max(float(np.abs(ref.outputs[0]).max()), 1e-30)
    return float(np.abs(comp.outputs[0] - ref.outputs[0]).max()) / scale


def mutants(x: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, list]:
    """Explicit mutants of ``x`` ``(1, L, 4)``: the bases other than the
    sequence's at each position (all four at an N), and their (position
    index, base) pairs."""
    out, index = [], []
    for i, p in enumerate(positions):
        for b in range(4):
            if not np.array_equal(x[0, p], EYE[b]):
                m = x[0].copy()
                m[p] = EYE[b]
                out.append(m)
                index.append((i, b))
    return np.stack(out), index


def keras_time(kmodel, xs: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """Seconds of ``predict`` on ``xs`` in batches of ``batch``, warm: the
    graph is traced first for each batch shape the call meets (a full batch
    and the remainder)."""
    kmodel.predict(xs[: min(batch, len(xs))], batch_size=batch, verbose=0)
    if len(xs) % batch and len(xs) > batch:
        kmodel.predict(xs[: len(xs) % batch], batch_size=batch, verbose=0)
    t0 = time.perf_counter()
    y = kmodel.predict(xs, batch_size=batch, verbose=0)
    return time.perf_counter() - t0, y


def best_batch(kmodel, xs: np.ndarray, batches: list[int], n: int) -> dict:
    """Seconds per sequence of ``predict`` on ``n`` of ``xs`` at each batch
    size (warm), and the fastest."""
    sweep = {}
    for b in batches:
        dt, _ = keras_time(kmodel, xs[:n], b)
        sweep[b] = dt / n
    best = min(sweep, key=sweep.get)
    return dict(best_batch=best, sweep_s_per_seq=sweep, sweep_sequences=n)


def write_genome(workdir: Path, n_variants: int, seed: int = 0):
    """Three contigs of random bases with planted exons (as the fixture's
    window), and random SNVs at least a window's half from the ends."""
    rng = np.random.default_rng(seed)
    acc, don = fixture.ACCEPTOR, fixture.DONOR
    contigs = {}
    for i in range(3):
        seq = np.array(list("ACGT"))[rng.integers(0, 4, 60_000)]
        start = 500
        while start < len(seq) - 600:
            length = int(rng.integers(90, 160))
            seq[start - len(acc) : start] = list(acc)
            seq[start + length - 3 : start + length - 3 + len(don)] = list(don)
            start += length + int(rng.integers(200, 500))
        contigs[f"chr{i + 1}"] = "".join(seq)
    fa = write_fasta(contigs, workdir / "genome.fa")
    vcf = write_snvs(contigs, n_variants, WINDOW, rng, workdir / "variants.vcf")
    return fa, vcf


def package_scores(y_ref: np.ndarray, y_alt: np.ndarray) -> np.ndarray:
    """SpliceAI's delta scores and positions as its package forms them from
    the ensemble's mean outputs ``(n, 101, 3)``: ``(n, 8)``."""
    out = []
    for r, a in zip(y_ref, y_alt):
        idx = [
            (a[:, 1] - r[:, 1]).argmax(),
            (r[:, 1] - a[:, 1]).argmax(),
            (a[:, 2] - r[:, 2]).argmax(),
            (r[:, 2] - a[:, 2]).argmax(),
        ]
        ds = [
            a[idx[0], 1] - r[idx[0], 1],
            r[idx[1], 1] - a[idx[1], 1],
            a[idx[2], 2] - r[idx[2], 2],
            r[idx[3], 2] - a[idx[3], 2],
        ]
        out.append(ds + [i - 50 for i in idx])
    return np.array(out, dtype=np.float64)


def table(path: Path) -> str:
    """The Markdown table of a result file."""
    import json

    res = json.loads(Path(path).read_text())
    rows = [
        "| case | what | ismkernel cpu s | Keras s (batch) | ratio | FLOP ceiling "
        "| max abs diff vs Keras |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in res["cases"].items():
        if name.startswith("ism"):
            what = f"ISM, {c['mutants']} mutants, {c['models']} model(s)"
            diff = c["max_abs_diff_vs_keras"]
        else:
            what = f"{c['n_variants']} SNVs, {c['models']} models, delta scores"
            diff = c["max_abs_delta_score_diff_vs_keras"]
        batch = c["keras_batch"]
        batch = batch["best_batch"] if isinstance(batch, dict) else batch
        rows.append(
            f"| {name} | {what} | {c['ismkernel_s']:.1f} | {c['keras_s']:.1f} "
            f"({batch}) | {c['ratio']:.2f}x | {c['flop_ceiling']:.2f}x | "
            f"{diff:.1e} |"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--positions", type=int, default=500, help="central positions")
    p.add_argument("--keras-every", type=int, default=4)
    p.add_argument("--keras-batches", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--n-variants", type=int, default=1000)
    p.add_argument("--time-variants", type=int, default=100)
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--table", type=Path, metavar="JSON", help="print a result's table and stop"
    )
    args = p.parse_args(argv)
    if args.table is not None:
        print(table(args.table))
        return 0

    paths = spliceai_models()
    models = [ismkernel.load_model(path) for path in paths]
    codes, _ = fixture.sequence()
    x = fixture.onehot(codes)[None]
    seq_len = x.shape[1]
    centre = seq_len // 2
    central = np.arange(centre - args.positions // 2, centre + args.positions // 2)
    result: dict = dict(
        kind="real-models",
        machine=machine_info(),
        spliceai=VERSION,
        seq_len=seq_len,
        positions=[int(central[0]), int(central[-1]) + 1],
        protocol=(
            f"ismkernel cpu, warm, all {len(central)} positions (the three other "
            f"bases; the sequence's own is copied) and {args.time_variants} of the "
            f"{args.n_variants} variants; Keras predict on explicit mutants of "
            f"every {args.keras_every}th position and on the reference and "
            "alternative windows of the same variants, at the best batch of a "
            "sweep; both scaled to the whole case"
        ),
    )

    # 1. Checks against the reference backend.
    sample = central[[0, 1, len(central) // 2, -2, -1]]
    _check(
        "ism-1 vs reference",
        ism_error(
            ismkernel.ism(models[0], x, positions=sample, backend="cpu"),
            ismkernel.ism(models[0], x, positions=sample, backend="reference"),
        ),
        1e-4,
    )
    few = central[[0, len(central) // 2, -1]]
    _check(
        "ism-5 vs reference",
        ism_error(
            ismkernel.ism(models=models, x=x, positions=few, backend="cpu"),
            ismkernel.ism(models=models, x=x, positions=few, backend="reference"),
        ),
        1e-4,
    )
    with tempfile.TemporaryDirectory() as tmp:
        fa, vcf = write_genome(Path(tmp), args.n_variants)
        genome = Genome(fa)
        variants = read_vcf(vcf)
        timed = variants[: args.time_variants]
        opts = dict(reduce="spliceai", length=WINDOW)
        comp = score_variants(models, variants[:3], genome, backend="cpu", **opts)
        ref = score_variants(models, variants[:3], genome, backend="reference", **opts)
        _check(
            "variants-5 vs reference",
            float(np.abs(comp.scores[0][:, :4] - ref.scores[0][:, :4]).max()),
            1e-5,
        )

        # 2. ismkernel, warm.
        run1 = IsmRun(models[0], positions=central)
        run1.plan_for(x)
        t0 = time.perf_counter()
        res1 = run1(x)
        ism1 = time.perf_counter() - t0
        print(f"ismkernel ism-1: {ism1:.1f} s", flush=True)
        run5 = EnsembleRun(Ensemble(models), positions=central)
        for run in run5.runs:
            run.plan_for(x)
        t0 = time.perf_counter()
        res5 = run5(x)
        ism5 = time.perf_counter() - t0
        print(f"ismkernel ism-5: {ism5:.1f} s", flush=True)
        t0 = time.perf_counter()
        ours = score_variants(models, timed, genome, backend="cpu", **opts)
        var5 = time.perf_counter() - t0
        print(f"ismkernel variants-5: {var5:.1f} s for {len(timed)}", flush=True)

        # 3. Keras, naive and batched.
        import tensorflow as tf
        import tf_keras

        tf.get_logger().setLevel("ERROR")  # retracing notes: warm-ups trace
        kmodels = [tf_keras.models.load_model(p, compile=False) for p in paths]
        sub = central[:: args.keras_every]
        xs, index = mutants(x, sub)
        n_all = sum(1 for p in central for b in range(4) if x[0, p, b] != 1.0)
        scale = n_all / len(xs)
        sweep = best_batch(kmodels[0], xs, args.keras_batches, min(len(xs), 128))
        batch = sweep["best_batch"]
        # Each model's naive ISM (its reference pass and the timed mutants,
        # scaled); the first model's alone is ism-1.
        per_model, ys = [], []
        for km in kmodels:
            dt_ref, _ = keras_time(km, x, 1)
            dt, y = keras_time(km, xs, batch)
            per_model.append(dt * scale + dt_ref)
            ys.append(y)
        keras1, keras5 = per_model[0], sum(per_model)
        pi, bi = np.array(index).T
        err1 = float(
            np.abs(res1.outputs[0][0, pi * args.keras_every, bi] - ys[0]).max()
        )
        print(f"Keras ism-1: {keras1:.1f} s (batch {batch})", flush=True)
        y5 = np.mean(ys, axis=0)
        err5 = float(np.abs(res5.outputs[0][0, pi * args.keras_every, bi] - y5).max())
        print(f"Keras ism-5: {keras5:.1f} s", flush=True)

        ref_w, alt_w = windows(genome, timed, WINDOW)
        vsweep = best_batch(kmodels[0], ref_w, args.keras_batches, len(ref_w))
        vbatch = vsweep["best_batch"]
        keras_v, refs, alts = 0.0, [], []
        for km in kmodels:
            dt_r, y_r = keras_time(km, ref_w, vbatch)
            dt_a, y_a = keras_time(km, alt_w, vbatch)
            keras_v += dt_r + dt_a
            refs.append(y_r)
            alts.append(y_a)
        print(f"Keras variants-5: {keras_v:.1f} s for {len(timed)}", flush=True)
        want = package_scores(np.mean(refs, axis=0), np.mean(alts, axis=0))
        got = ours.scores[0]
        err_v = float(np.abs(got[:, :4] - want[:, :4]).max())
        same_pos = float((got[:, 4:] == want[:, 4:]).mean())

    # 4. FLOP ceilings: naive FLOPs (a full forward pass per mutant) over the
    # plan's. A variant costs Keras two passes, ismkernel a reference pass
    # and one planned mutant.
    ceiling = res1.stats["flops_naive"] / res1.stats["flops_plan"]
    window = fixture.onehot(codes[:WINDOW])[None]
    vrun = IsmRun(fix_length(models[0], WINDOW), positions=[WINDOW // 2])
    plan = vrun.plan_for(window)[3]
    var_ceiling = 2 * plan.flops_naive / (plan.flops_naive + plan.flops_plan)
    v_scale = args.n_variants / len(timed)

    def ism_case(n_models, ours_s, keras_s, err):
        return dict(
            models=n_models,
            mutants=n_all,
            keras_mutants_timed=len(xs),
            ismkernel_s=ours_s,
            keras_s=keras_s,
            ratio=keras_s / ours_s,
            flop_ceiling=ceiling,
            max_abs_diff_vs_keras=err,
        )

    result.update(
        keras=dict(tensorflow=tf.__version__, tf_keras=tf_keras.__version__),
        cases={
            "ism-1": dict(
                ism_case(1, ism1, keras1, err1),
                flops_naive_per_mutant=res1.stats["flops_naive"],
                flops_plan_per_mutant=res1.stats["flops_plan"],
                keras_batch=sweep,
            ),
            "ism-5": dict(ism_case(5, ism5, keras5, err5), keras_batch=batch),
            "variants-5": dict(
                models=5,
                window=WINDOW,
                n_variants=args.n_variants,
                variants_timed=len(timed),
                ismkernel_s=var5 * v_scale,
                keras_s=keras_v * v_scale,
                ratio=keras_v / var5,
                flop_ceiling=var_ceiling,
                flop_ceiling_per_mutant=plan.ceiling,
                keras_batch=vsweep,
                max_abs_delta_score_diff_vs_keras=err_v,
                positions_equal_to_keras=same_pos,
            ),
        },
    )
    for name, case in result["cases"].items():
        print(
            f"{name}: ismkernel {case['ismkernel_s']:.1f} s, Keras "
            f"{case['keras_s']:.1f} s, ratio {case['ratio']:.2f}x, FLOP ceiling "
            f"{case['flop_ceiling']:.2f}x"
        )
    write_result(result, args.out or RESULTS / f"real-{platform.node() or 'host'}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
