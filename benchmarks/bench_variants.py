"""Variant scoring benchmark: variants per second of ``score_variants`` with
the cpu backend against two ``Model.predict`` calls per variant (reference
allele window, alternative allele window) with the reference backend, on
Basset-1000, in the same run.

    python benchmarks/bench_variants.py --model-file basset-1000.h5
    python benchmarks/bench_variants.py            # builds Basset-1000 (needs tf-keras)

A synthetic genome and VCF are written to a scratch directory. The run first
checks ismkernel's scores against explicit predictions on extracted windows
and stops on a mismatch; then it times. The peer is also timed batched (all
reference windows in one call, all alternative windows in another), the
fastest way to score variants with full forward passes. Results go to
``benchmarks/results/variants-<host>.json``.
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

from machine import machine_info, write_result  # noqa: E402

import ismkernel  # noqa: E402
from ismkernel.io.genome import Genome, read_vcf  # noqa: E402
from ismkernel.io.sequences import encode  # noqa: E402
from ismkernel.variants import score_variants  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def write_fasta(contigs: dict[str, str], path: Path) -> Path:
    """``contigs`` (name: bases) as a FASTA file of 80-column lines."""
    with open(path, "w") as f:
        for name, seq in contigs.items():
            f.write(f">{name}\n")
            for i in range(0, len(seq), 80):
                f.write(seq[i : i + 80] + "\n")
    return path


def write_snvs(
    contigs: dict[str, str], n_variants: int, margin: int, rng, path: Path
) -> Path:
    """``n_variants`` random SNVs of ``contigs``, each at least ``margin``
    from a contig's ends, as a sorted VCF."""
    names = list(contigs)
    rows = []
    for i in range(n_variants):
        chrom = names[rng.integers(len(names))]
        pos = int(rng.integers(margin, len(contigs[chrom]) - margin))
        ref = contigs[chrom][pos - 1]
        alt = rng.choice([b for b in "ACGT" if b != ref])
        rows.append((chrom, pos, f"v{i}", ref, alt))
    rows.sort(key=lambda r: (r[0], r[1]))
    with open(path, "w") as f:
        f.write("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n")
        for r in rows:
            f.write("\t".join(map(str, r)) + "\n")
    return path


def write_genome(workdir: Path, n_variants: int, seq_len: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    contigs = {
        f"chr{i + 1}": "".join(rng.choice(list("ACGT"), 200_000)) for i in range(3)
    }
    fa = write_fasta(contigs, workdir / "genome.fa")
    vcf = write_snvs(contigs, n_variants, seq_len, rng, workdir / "variants.vcf")
    return fa, vcf


def windows(genome: Genome, variants, seq_len: int):
    c = seq_len // 2
    ref, alt = [], []
    for v in variants:
        seq = genome.fetch(v.chrom, v.pos - 1 - c, v.pos - 1 - c + seq_len)
        ref.append(encode(seq))
        alt.append(encode(seq[:c] + v.alt + seq[c + 1 :]))
    return np.stack(ref), np.stack(alt)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model-file", type=Path, help="Basset-1000 .h5 (default: build it)"
    )
    p.add_argument("--n-variants", type=int, default=2000)
    p.add_argument(
        "--peer-variants",
        type=int,
        default=200,
        help="variants the per-call peer is timed on",
    )
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.model_file is None:
            import models

            path = workdir / "basset-1000.h5"
            models.build("basset-1000").save(path)
        else:
            path = args.model_file
        model = ismkernel.load_model(path)
        seq_len = model.inputs[0].shape[0]
        fa, vcf = write_genome(workdir, args.n_variants, seq_len)
        genome = Genome(fa)
        variants = read_vcf(vcf)

        # 1. Check against explicit predictions.
        sample = variants[:50]
        res = score_variants(model, sample, genome, backend="cpu")
        ref_x, alt_x = windows(genome, sample, seq_len)
        (p_ref,) = model.predict(ref_x)
        (p_alt,) = model.predict(alt_x)
        scale = float(np.abs(p_ref).max())
        err = float(np.abs(res.scores[0] - (p_alt - p_ref)).max()) / scale
        if not err <= 1e-4:
            raise SystemExit(
                f"score_variants differs from predict by {err:.2e} x max|output|"
            )
        print(f"check: max |difference| = {err:.1e} x max |output|", flush=True)

        # 2. ismkernel, all variants.
        score_variants(model, variants[:64], genome, backend="cpu")  # warm
        best = np.inf
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            score_variants(model, variants, genome, backend="cpu")
            best = min(best, time.perf_counter() - t0)
        ours = len(variants) / best

        # 3. Two predict calls per variant, reference backend.
        sub = variants[: args.peer_variants]
        model.predict(ref_x[:1])
        t0 = time.perf_counter()
        for v in sub:
            r, a = windows(genome, [v], seq_len)
            model.predict(r)
            model.predict(a)
        per_call = len(sub) / (time.perf_counter() - t0)

        # 4. The same, batched: one call for all reference windows, one for
        # all alternative windows.
        t0 = time.perf_counter()
        r, a = windows(genome, sub, seq_len)
        model.predict(r)
        model.predict(a)
        batched = len(sub) / (time.perf_counter() - t0)

    result = dict(
        kind="variants",
        machine=machine_info(),
        model="basset-1000",
        seq_len=seq_len,
        n_variants=len(variants),
        check_rel_err=err,
        ismkernel_cpu=dict(variants_per_second=ours, seconds=best),
        predict_per_variant=dict(
            variants_per_second=per_call, n_variants=len(sub), ratio=ours / per_call
        ),
        predict_batched=dict(
            variants_per_second=batched, n_variants=len(sub), ratio=ours / batched
        ),
    )
    print(
        f"ismkernel cpu: {ours:.1f} variants/s; two predict calls per variant: "
        f"{per_call:.1f}/s ({ours / per_call:.1f}x); batched predict: {batched:.1f}/s "
        f"({ours / batched:.1f}x)"
    )
    write_result(
        result, args.out or RESULTS / f"variants-{platform.node() or 'host'}.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
