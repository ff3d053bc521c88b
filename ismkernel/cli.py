"""The ``ismkernel`` command line."""

from __future__ import annotations

import argparse
import os
import sys

from ismkernel import __version__
from ismkernel.errors import BackendUnavailableError, InputError, IsmkernelError

__all__ = ["main"]


def _inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from ismkernel.errors import InputError
    from ismkernel.inputs import seq_input_index
    from ismkernel.model import load_model
    from ismkernel.plan import build_plan

    model = load_model(args.model)
    if model.deferred_length:
        if args.length is None:
            print(model.summary())
            print("\nPass --length L to see its graph and ISM plan for that length.")
            return 0
        model = model.with_length(args.length)
    print(model.summary())
    graph = model.graph
    index = seq_input_index(graph.input_specs, None)
    shapes = {s.name: s.shape for s in graph.input_specs}
    name = graph.input_specs[index].name
    length = args.length if args.length is not None else shapes[name][0]
    if length is None:
        print("\nThe input length is free: pass --length L to see the ISM plan.")
        return 0
    if length < 1:
        raise InputError(f"--length must be a positive integer, got {length}")
    shapes[name] = (length,) + tuple(shapes[name][1:])
    if any(None in s for s in shapes.values()):
        print("\nAn input has a free dimension; the ISM plan needs fixed shapes.")
        return 0
    plan = build_plan(graph, graph.inputs[index], shapes, np.arange(length))
    print("\nISM plan (per mutant):")
    print(plan.describe())
    return 0


def _tasks(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--tasks takes channel indices such as 0,3,5, got {text!r}"
        ) from None


def _ism(args: argparse.Namespace) -> int:
    from ismkernel.job import EXAMPLE_FASTA, EXAMPLE_MODEL, IsmJob, run_job

    if args.example:
        args.model = args.model or EXAMPLE_MODEL
        args.input = args.input or EXAMPLE_FASTA
        args.out = args.out or "ismkernel-example.h5"
    needed = ("model", "out") if args.bed else ("model", "input", "out")
    missing = [n for n in needed if not getattr(args, n)]
    if missing:
        raise InputError(
            "ismkernel ism needs MODEL, INPUT (or --bed with --genome) and -o OUT "
            "(or --example); missing: " + ", ".join(missing)
        )
    job = IsmJob(
        model=args.model,
        input=args.input,
        out=args.out,
        positions=args.positions,
        alternatives=args.alternatives,
        outputs=args.output,
        reduce=args.reduce,
        tasks=args.tasks,
        sum_over=args.sum_over,
        backend=args.backend,
        batch_size=args.batch_size,
        memory_budget=args.memory_budget,
        threads=args.threads,
        center=args.center,
        n_as=args.n_as,
        format=args.format,
        seqs_per_batch=args.seqs_per_batch,
        bed=args.bed,
        genome=args.genome,
        scheduler=args.scheduler,
        workers=args.workers,
        resume=args.resume,
        force=args.force,
        quiet=args.quiet,
    )
    try:
        summary = run_job(job)
    except KeyboardInterrupt:
        print(f"ismkernel: interrupted; {job.where_results_are()}", file=sys.stderr)
        return 130
    if not args.quiet:
        done = f"{summary['scored']} sequence(s) scored"
        if summary["skipped"]:
            done += f", {summary['skipped']} already in the file"
        if summary.get("continued") and summary["continued"] != summary["out"]:
            done += f" (continued '{summary['continued']}')"
        print(f"{done}; wrote {summary['out']}", file=sys.stderr)
    return 0


def _positive(value, flag: str) -> None:
    if value is not None and value < 1:
        raise InputError(f"{flag} must be a positive integer, got {value}")


def _variants(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from ismkernel.backends import resolve_backend
    from ismkernel.distributed import cluster_client
    from ismkernel.inputs import check_memory_budget
    from ismkernel.io.genome import Genome, read_vcf
    from ismkernel.io.output import OutputLock, check_output_path, check_space
    from ismkernel.io.results import sha256
    from ismkernel.job import check_scheduler, progress_bar
    from ismkernel.model import load_model
    from ismkernel.reduce import parse_range
    from ismkernel.variants import score_variants, write_h5, write_tsv

    # Everything that can be refused is refused before the scoring, and
    # nothing is written before it ends.
    out = check_output_path(args.out, "-o", (".tsv", ".txt", ".h5", ".hdf5"))
    suffix = os.path.splitext(out)[1].lower()
    if os.path.exists(out) and not args.force:
        raise InputError(f"'{out}' exists; pass --force to overwrite it")
    for flag in ("batch_size", "threads", "workers"):
        _positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    memory_budget = check_memory_budget(args.memory_budget, "--memory-budget")
    if args.scheduler is not None and args.workers is not None:
        raise InputError("give either --scheduler or --workers, not both")
    check_scheduler(args.scheduler)
    resolve_backend(args.backend)
    parse_range(args.sum_over, "--sum-over")
    model = load_model(args.model)
    variants = read_vcf(args.vcf)
    genome = Genome(args.genome)
    start = time.perf_counter()
    with OutputLock(out):
        if os.path.exists(out) and not args.force:
            raise InputError(f"'{out}' exists; pass --force to overwrite it")
        values = sum(int(np.prod([d or 1 for d in s.shape])) for s in model.outputs)
        check_space(out, len(variants) * (200 + 3 * 16 * values) + (1 << 16))
        bar = progress_bar(len(variants), "variant", "variants", args.quiet)
        try:
            with cluster_client(args.scheduler, args.workers) as client:
                res = score_variants(
                    model,
                    variants,
                    genome,
                    reduce=args.reduce,
                    outputs=args.output,
                    tasks=args.tasks,
                    sum_over=args.sum_over,
                    rc=args.rc,
                    backend=args.backend,
                    batch_size=args.batch_size,
                    memory_budget=memory_budget,
                    threads=args.threads,
                    client=client,
                    progress=bar.update,
                )
        finally:
            bar.close()
        if suffix in (".h5", ".hdf5"):
            meta = {
                "model_file": os.path.basename(args.model),
                "model_sha256": sha256(args.model),
                "vcf_file": os.path.basename(args.vcf),
                "genome_file": os.path.basename(args.genome),
                "reduce": args.reduce,
                "rc": bool(args.rc),
            }
            write_h5(res, out, meta)
        else:
            write_tsv(res, out)
    if not variants:
        print(
            f"ismkernel: note: '{args.vcf}' holds no variant records (a header "
            f"only); wrote an empty result to {out}",
            file=sys.stderr,
        )
    elif not args.quiet:
        print(
            f"{res.stats['n_scored']} variant(s) scored in {res.stats['n_windows']} "
            f"window(s), {res.stats['n_skipped']} skipped (reasons in the output), "
            f"in {time.perf_counter() - start:.1f} s; wrote {out}",
            file=sys.stderr,
        )
    return 0


def _scoring_options(
    p: argparse.ArgumentParser, reducers: list[str], backend_default: str | None
) -> None:
    """What to keep and how to reduce it, and the engine: shared by ``ism``
    and ``variants``."""
    p.add_argument(
        "--output",
        action="append",
        metavar="NAME",
        help="model output to keep (repeatable; default all)",
    )
    p.add_argument(
        "--reduce",
        default="delta",
        choices=reducers,
        help="score per mutant (default delta: mutant minus reference)",
    )
    p.add_argument(
        "--tasks", type=_tasks, metavar="I,J,...", help="output channels to keep"
    )
    p.add_argument(
        "--sum-over",
        metavar="START:END",
        help="sum a profile output over this range of its length",
    )
    p.add_argument(
        "--backend",
        default=backend_default,
        choices=["auto", "cpu", "reference"],
        help="engine (default auto"
        + ("; --resume takes the file's)" if backend_default is None else ")"),
    )
    p.add_argument("--batch-size", type=int, metavar="N", help="mutants per chunk")
    p.add_argument(
        "--memory-budget",
        metavar="BYTES",
        help="e.g. 512M or 2G (default 1G)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads of the cpu backend (default NUMBA_NUM_THREADS: all cores)",
    )


def _dask_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="send chunks to this Dask distributed scheduler",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="start a local Dask cluster of N worker processes",
    )


def _plot(args: argparse.Namespace) -> int:
    from ismkernel.plot import plot_ism

    out = plot_ism(
        args.results,
        args.seq,
        args.out,
        output=args.output,
        task=args.task,
        region=args.region,
    )
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ismkernel.errors import OutputFileError
    from ismkernel.io.output import check_directory
    from ismkernel.job import EXAMPLE_FASTA, EXAMPLE_MODEL, IsmJob, run_job
    from ismkernel.plot import plot_ism

    out_dir = args.out_dir
    if not os.path.isdir(out_dir):
        if os.path.lexists(out_dir):
            raise OutputFileError(f"--out-dir '{out_dir}' is not a directory")
        try:
            os.makedirs(out_dir)
        except OSError as err:
            raise OutputFileError(
                f"cannot create --out-dir '{out_dir}' ({err.strerror or err})"
            ) from None
    check_directory(out_dir, f"--out-dir '{out_dir}'")
    h5 = os.path.join(out_dir, "ismkernel-demo.h5")
    png = os.path.join(out_dir, "ismkernel-demo.png")
    print(
        "ismkernel demo: ISM of a small model trained to spot AP-1 (TGACTCA) and "
        "GATA (AGATAAG) sites,\non 8 sequences with the motifs planted where "
        "their names say.",
        file=sys.stderr,
    )
    job = IsmJob(
        model=EXAMPLE_MODEL,
        input=EXAMPLE_FASTA,
        out=h5,
        reduce="delta",
        force=True,
        quiet=args.quiet,
        backend=args.backend,
    )
    try:
        summary = run_job(job)
    except KeyboardInterrupt:
        print(f"ismkernel: interrupted; {job.where_results_are()}", file=sys.stderr)
        return 130
    print(
        f"scored {summary['scored']} sequences in {summary['seconds']:.1f} s; "
        f"wrote {h5}",
        file=sys.stderr,
    )
    try:
        plot_ism(h5, "ap1@40_gata@130", png)
    except BackendUnavailableError as err:
        print(f"no plot: {err}", file=sys.stderr)
        return 0
    print(
        f"wrote {png}: its heatmap and logo show the two planted motifs, at "
        "positions 40-46 and 130-136",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ismkernel",
        description="Exact, fast in-silico saturation mutagenesis of sequence models.",
    )
    parser.add_argument(
        "--version", action="version", version=f"ismkernel {__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser(
        "inspect", help="print a model's layers, shapes, parameters and ISM plan"
    )
    p.add_argument("model", metavar="MODEL", help="Keras .h5/.keras or ONNX file")
    p.add_argument(
        "--length",
        type=int,
        metavar="L",
        help="sequence length to plan for (default: the model's own)",
    )
    p.set_defaults(func=_inspect)

    p = sub.add_parser(
        "ism",
        help="score every single-base substitution of the sequences in a file",
        description="ISM of every sequence in INPUT with MODEL, written to OUT as "
        "it goes. An interrupted run leaves a valid file; --resume finishes it.",
    )
    p.add_argument(
        "model", metavar="MODEL", nargs="?", help="Keras .h5/.keras or ONNX file"
    )
    p.add_argument(
        "input",
        metavar="INPUT",
        nargs="?",
        help="FASTA (.fa/.fasta, gzipped or not) or one-hot .npy/.npz",
    )
    p.add_argument(
        "-o",
        "--out",
        metavar="OUT",
        help="results file (.h5, or .npz with --format npz)",
    )
    p.add_argument(
        "--example",
        action="store_true",
        help="run on the bundled example model and FASTA",
    )
    p.add_argument(
        "--positions", metavar="START:END", help="positions to mutate (default all)"
    )
    p.add_argument(
        "--alternatives",
        default="ACGT",
        metavar="LETTERS",
        help="bases to put at each position: any of A, C, G, T, and N for an "
        "all-zero row (default ACGT)",
    )
    _scoring_options(p, ["raw", "delta", "log2fc", "mean-centred", "l2"], None)
    p.add_argument(
        "--center",
        action="store_true",
        help="crop or pad sequences of another length around their centre",
    )
    p.add_argument(
        "--n-as",
        default="zero",
        choices=["zero", "uniform"],
        help="one-hot row of N and other IUPAC codes (default: all zero)",
    )
    p.add_argument(
        "--format",
        choices=["hdf5", "npz"],
        help="output format (default from OUT's suffix: .npz or HDF5); it must "
        "agree with the suffix",
    )
    p.add_argument(
        "--seqs-per-batch",
        type=int,
        metavar="N",
        help="sequences scored and written per batch: what an interrupted run "
        "loses at most (default from the memory budget)",
    )
    p.add_argument(
        "--bed",
        metavar="BED",
        help="score genome regions (with --genome) instead of INPUT",
    )
    p.add_argument(
        "--genome", metavar="FASTA", help="indexed reference genome for --bed"
    )
    _dask_options(p)
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run into OUT"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite OUT if it exists (the old file stays until the new one "
        "is complete)",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar or summary"
    )
    p.set_defaults(func=_ism)

    p = sub.add_parser(
        "variants",
        help="score the SNVs of a VCF: reference against alternative allele",
        description="For each SNV in the VCF, the model's output on the "
        "model-length genome window centred on it, with the reference allele "
        "and with the alternative. Variants that cannot be scored are kept, in "
        "order, with the reason.",
    )
    p.add_argument("model", metavar="MODEL", help="Keras .h5/.keras or ONNX file")
    p.add_argument("--vcf", required=True, help="VCF, plain or gzipped")
    p.add_argument("--genome", required=True, metavar="FASTA", help="reference genome")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help=".tsv or .h5")
    _scoring_options(p, ["raw", "delta", "log2fc"], "auto")
    p.add_argument(
        "--rc", action="store_true", help="average with the reverse complement"
    )
    _dask_options(p)
    p.add_argument(
        "--force", action="store_true", help="overwrite OUT (replaced at the end)"
    )
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_variants)

    p = sub.add_parser(
        "plot",
        help="heatmap and reference logo of one sequence's ISM scores",
    )
    p.add_argument(
        "results", metavar="RESULTS", help="an .h5 file written by ismkernel ism"
    )
    p.add_argument(
        "--seq", required=True, metavar="NAME_OR_INDEX", help="which sequence"
    )
    p.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="FIG",
        help="figure file: .png, .svg or .pdf",
    )
    p.add_argument(
        "--output", metavar="NAME", help="model output to plot (default the first)"
    )
    p.add_argument(
        "--task", type=int, metavar="I", help="channel of a multi-task output"
    )
    p.add_argument("--region", metavar="START:END", help="positions to show")
    p.set_defaults(func=_plot)

    p = sub.add_parser(
        "demo", help="run ISM on the bundled example and plot it (no files needed)"
    )
    p.add_argument(
        "--out-dir", default=".", metavar="DIR", help="where to write (default .)"
    )
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "reference"])
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ismkernel`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except IsmkernelError as err:
        print(f"ismkernel: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ismkernel: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
