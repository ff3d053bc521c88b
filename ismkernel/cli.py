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

    from ismkernel.backends import get_backend
    from ismkernel.errors import InputError
    from ismkernel.inputs import seq_input_index
    from ismkernel.model import load_model
    from ismkernel.plan import Edits
    from ismkernel.plan.pairs import independent_pairs

    for flag in ("width", "max_distance"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(
                f"--{flag.replace('_', '-')} must be a positive integer, got {value}"
            )
    backend = get_backend(args.backend)
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
    n_ch = shapes[name][-1]
    seq = graph.inputs[index]
    alts = np.eye(n_ch, dtype=np.float32)
    # The plan a run on this backend uses: its tactics and fusion records.
    plan = backend.plan(
        graph,
        seq,
        shapes,
        np.arange(length),
        edits=Edits.point(np.arange(length), alts),
    )
    print(f"\nISM plan ({backend.name} backend; per mutant):")
    print(plan.describe())
    if args.width is not None:
        w = args.width
        if w > length:
            raise InputError(f"--width {w} is longer than the sequence ({length})")
        starts = np.arange(length - w + 1)
        edits = Edits(
            starts,
            np.broadcast_to(np.arange(w), (len(starts), w)).copy(),
            np.zeros((1, w, n_ch), np.float32),
        )
        scan = backend.plan(graph, seq, shapes, starts, edits=edits)
        print(f"\nWindow scan plan (windows of {w} rows, every start; per edit):")
        print(scan.describe())
    if args.max_distance is not None:
        from ismkernel.analyses import _pairs_within

        pairs = _pairs_within(np.arange(length), args.max_distance)
        if not len(pairs):
            raise InputError(f"no pairs lie within --max-distance {args.max_distance}")
        free = independent_pairs(plan, pairs[:, 0], pairs[:, 1])
        a, b = np.divmod(np.arange(n_ch * n_ch), n_ch)
        edits = Edits(
            pairs[:, 0],
            np.stack([np.zeros(len(pairs), np.int64), pairs[:, 1] - pairs[:, 0]], 1),
            np.stack([alts[a], alts[b]], axis=1),
        )
        both = backend.plan(graph, seq, shapes, pairs[:, 0], edits=edits)
        print(
            f"\nPairwise plan (pairs at most {args.max_distance} apart; per double "
            "mutant):"
        )
        print(both.describe())
        print(
            f"{int(free.sum())} of {len(pairs)} pairs provably never interact (their "
            "changes never meet at an op that is not affine): not computed."
        )
    return 0


def _tasks(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--tasks takes channel indices such as 0,3,5, got {text!r}"
        ) from None


def _ism(args: argparse.Namespace) -> int:
    """``ism``, ``scan``, ``pairwise`` and ``design``: one job each, streamed
    to OUT."""
    from ismkernel.job import EXAMPLE_FASTA, EXAMPLE_MODEL, IsmJob, run_job

    kind = args.command
    _models_from_flags(args, positional_after=True)
    if args.example:
        args.model = args.model or EXAMPLE_MODEL
        args.input = args.input or EXAMPLE_FASTA
        args.out = args.out or f"ismkernel-example-{kind}.h5"
    needed = ("model", "out") if args.bed else ("model", "input", "out")
    missing = [n for n in needed if not getattr(args, n)]
    if missing:
        raise InputError(
            f"ismkernel {kind} needs MODEL, INPUT (or --bed with --genome) and -o "
            "OUT (or --example); missing: " + ", ".join(missing)
        )
    analysis = {}
    if kind == "scan":
        analysis = dict(
            motifs=args.motif,
            occlude=args.occlude,
            shuffle=args.shuffle,
            n_shuffles=args.n,
            kmer=args.k,
            seed=args.seed,
        )
    elif kind == "pairwise":
        analysis = dict(max_distance=args.max_distance)
    elif kind == "design":
        analysis = dict(
            rounds=args.rounds, objective=args.objective, beam=args.beam, tol=args.tol
        )
    job = IsmJob(
        model=args.model,
        input=args.input,
        out=args.out,
        positions=args.positions,
        alternatives=getattr(args, "alternatives", "ACGT"),
        outputs=args.output,
        reduce=getattr(args, "reduce", "delta"),
        tasks=args.tasks,
        sum_over=args.sum_over,
        over=getattr(args, "over", None),
        around=getattr(args, "around", None),
        backend=args.backend,
        batch_size=args.batch_size,
        memory_budget=args.memory_budget,
        threads=args.threads,
        center=args.center,
        n_as=args.n_as,
        format=getattr(args, "format", None),
        seqs_per_batch=args.seqs_per_batch,
        bed=args.bed,
        genome=args.genome,
        scheduler=args.scheduler,
        workers=args.workers,
        resume=args.resume,
        force=args.force,
        quiet=args.quiet,
        kind=kind,
        **analysis,
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


def _models_from_flags(args: argparse.Namespace, positional_after: bool) -> None:
    """``--model`` (repeatable) into ``args.model``: one file, or a list for
    an ensemble. With ``positional_after``, a lone positional given with
    ``--model`` is the INPUT (argparse fills MODEL first)."""
    flags = getattr(args, "models", None) or []
    if not flags:
        return
    if args.model is not None:
        if not positional_after or getattr(args, "input", None) is not None:
            raise InputError(
                "give the model as MODEL or with --model (repeatable, for an "
                "ensemble), not both"
            )
        args.input = args.model
    args.model = flags[0] if len(flags) == 1 else list(flags)


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
    from ismkernel.job import check_scheduler, load_models, progress_bar
    from ismkernel.reduce import parse_range
    from ismkernel.variants import score_variants, write_h5, write_tsv

    _models_from_flags(args, positional_after=False)
    if args.model is None:
        raise InputError("ismkernel variants needs MODEL, or --model (repeatable)")
    paths = args.model if isinstance(args.model, list) else [args.model]

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
    _positive(args.length, "--length")
    model = load_models(paths)
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
                    over=args.over,
                    around=args.around,
                    length=args.length,
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
                "model_file": ",".join(os.path.basename(p) for p in paths),
                "model_sha256": ",".join(sha256(p) for p in paths),
                "vcf_file": os.path.basename(args.vcf),
                "genome_file": os.path.basename(args.genome),
                "reduce": args.reduce,
                "rc": bool(args.rc),
                "over": args.over,
                "around": args.around,
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


def _job_options(p: argparse.ArgumentParser, out_help: str) -> None:
    """The input, output and run options every sequence-file job shares."""
    p.add_argument(
        "model", metavar="MODEL", nargs="?", help="Keras .h5/.keras or ONNX file"
    )
    _model_flag(p)
    p.add_argument(
        "input",
        metavar="INPUT",
        nargs="?",
        help="FASTA (.fa/.fasta, gzipped or not) or one-hot .npy/.npz",
    )
    p.add_argument("-o", "--out", metavar="OUT", help=out_help)
    p.add_argument(
        "--example",
        action="store_true",
        help="run on the bundled example model and FASTA",
    )
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


def _model_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="FILE",
        help="the model, instead of MODEL; repeat it for an ensemble, whose "
        "outputs are averaged before the reducer (ism and variants)",
    )


def _profile_options(p: argparse.ArgumentParser) -> None:
    """The rows the profile reducers (max, min, spliceai) read."""
    p.add_argument(
        "--over",
        metavar="START:END",
        help="max/min/spliceai: rows of the profile output to look at",
    )
    p.add_argument(
        "--around",
        type=int,
        metavar="N",
        help="max/min/spliceai: look at the rows within N of each mutated "
        "position (output centred on the input; spliceai default 50)",
    )


#: The reducers of ``ism`` and ``variants`` that read along a profile.
_PROFILE_HELP = (
    "; max/min: the largest/smallest change of a profile over --over or "
    "--around rows, with its position; spliceai: SpliceAI's delta scores "
    "(acceptor/donor gain/loss) and positions"
)


def _alternatives_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--alternatives",
        default="ACGT",
        metavar="LETTERS",
        help="bases to put at each position: any of A, C, G, T, and N for an "
        "all-zero row (default ACGT)",
    )


def _scoring_options(
    p: argparse.ArgumentParser,
    reducers: list[str] | None,
    backend_default: str | None,
    reduce_default: str = "delta",
    reduce_help: str = "score per mutant (default delta: mutant minus reference)",
) -> None:
    """What to keep and how to reduce it, and the engine: shared by the jobs
    and ``variants`` (no ``--reduce`` where ``reducers`` is None)."""
    p.add_argument(
        "--output",
        action="append",
        metavar="NAME",
        help="model output to keep (repeatable; default all)"
        if reducers is not None
        else "the output the objective reads (default the first)",
    )
    if reducers is not None:
        p.add_argument(
            "--reduce", default=reduce_default, choices=reducers, help=reduce_help
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
        choices=["auto", "cpu", "reference", "cuda", "cuda-emulated"],
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
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "cpu", "reference", "cuda", "cuda-emulated"],
        help="the backend whose plan (tactics, fused epilogues) to show",
    )
    p.add_argument(
        "--width",
        type=int,
        metavar="W",
        help="also the plan of window scans of W rows: FLOPs per edit",
    )
    p.add_argument(
        "--max-distance",
        type=int,
        metavar="D",
        help="also the plan of double mutants at most D apart, and how many "
        "pairs provably never interact",
    )
    p.set_defaults(func=_inspect)

    p = sub.add_parser(
        "ism",
        help="score every single-base substitution of the sequences in a file",
        description="ISM of every sequence in INPUT with MODEL, written to OUT as "
        "it goes. An interrupted run leaves a valid file; --resume finishes it.",
    )
    _job_options(p, "results file (.h5, or .npz with --format npz)")
    p.add_argument(
        "--positions", metavar="START:END", help="positions to mutate (default all)"
    )
    _alternatives_option(p)
    _scoring_options(
        p,
        ["raw", "delta", "log2fc", "mean-centred", "l2", "max", "min", "spliceai"],
        None,
        reduce_help="score per mutant (default delta: mutant minus reference)"
        + _PROFILE_HELP,
    )
    _profile_options(p)
    p.add_argument(
        "--format",
        choices=["hdf5", "npz"],
        help="output format (default from OUT's suffix: .npz or HDF5); it must "
        "agree with the suffix",
    )
    p.set_defaults(func=_ism)

    p = sub.add_parser(
        "scan",
        help="write patterns over every window: occlusion, motifs, shuffles",
        description="For each window start, the model's outputs with the window's "
        "rows replaced: by zeros (--occlude W), by a motif (--motif, repeatable, "
        "one width), or by shuffles of the sequence's own window that keep its "
        "k-mer counts (--shuffle W --n N). Exact and incremental: a window costs "
        "the rows it reaches in each layer, not a forward pass.",
    )
    _job_options(p, "results file (.h5)")
    p.add_argument(
        "--positions",
        metavar="START:END",
        help="window starts (default every start where the window fits)",
    )
    kind = p.add_argument_group("patterns (give one kind)")
    kind.add_argument(
        "--motif",
        action="append",
        metavar="ACGT...",
        help="a motif to write at every start (repeatable; all one length)",
    )
    kind.add_argument("--occlude", type=int, metavar="W", help="write W rows of zeros")
    kind.add_argument(
        "--shuffle",
        type=int,
        metavar="W",
        help="write shuffles of the sequence's own W rows",
    )
    p.add_argument(
        "--n", type=int, default=20, metavar="N", help="shuffles per window (20)"
    )
    p.add_argument(
        "--k", type=int, default=2, metavar="K", help="k-mers a shuffle keeps (2)"
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the shuffles (0)"
    )
    _scoring_options(p, ["raw", "delta", "log2fc", "mean-centred", "l2"], None)
    p.set_defaults(func=_ism)

    p = sub.add_parser(
        "pairwise",
        help="double mutants of every pair of positions within a distance: "
        "epistasis maps",
        description="For every pair of positions at most --max-distance apart and "
        "every pair of alternatives, the double mutant's outputs against the "
        "single mutants': epistasis, f(ij) - f(i) - f(j) + f(ref). Pairs the "
        "plan proves never interact are not computed (their epistasis is zero).",
    )
    _job_options(p, "results file (.h5)")
    p.add_argument(
        "--positions", metavar="START:END", help="positions to pair (default all)"
    )
    p.add_argument(
        "--max-distance",
        type=int,
        metavar="D",
        help="largest distance between the two positions (default: every pair)",
    )
    _alternatives_option(p)
    _scoring_options(
        p,
        ["max-abs", "l2", "epistasis", "raw"],
        None,
        reduce_default="max-abs",
        reduce_help="per pair: max-abs or l2 of the epistasis over the "
        "alternatives (default max-abs); epistasis: every pair of alternatives'; "
        "raw: the double mutants' outputs",
    )
    p.set_defaults(func=_ism)

    p = sub.add_parser(
        "design",
        help="greedy or beam design by point mutations",
        description="Each round, an incremental ISM of the current sequences and "
        "the best edit by the objective (one output, --tasks, --sum-over, "
        "maximised or minimised) committed; the reference activations are "
        "updated only inside the edit's windows.",
    )
    _job_options(p, "results file (.h5), or FASTA (.fa) of the designed sequences")
    p.add_argument(
        "--positions", metavar="START:END", help="positions that may be edited"
    )
    _alternatives_option(p)
    p.add_argument("--rounds", type=int, metavar="R", help="edits to make")
    p.add_argument(
        "--objective",
        default="max",
        choices=["max", "min"],
        help="maximise or minimise the objective (default max)",
    )
    p.add_argument(
        "--beam", type=int, default=1, metavar="B", help="sequences kept per round"
    )
    p.add_argument(
        "--tol",
        type=float,
        metavar="T",
        help="stop once the best edit improves the objective by at most T",
    )
    _scoring_options(p, None, None)
    p.set_defaults(func=_ism)

    p = sub.add_parser(
        "variants",
        help="score the SNVs of a VCF: reference against alternative allele",
        description="For each SNV in the VCF, the model's output on the "
        "model-length genome window centred on it, with the reference allele "
        "and with the alternative. Variants that cannot be scored are kept, in "
        "order, with the reason.",
    )
    p.add_argument(
        "model", metavar="MODEL", nargs="?", help="Keras .h5/.keras or ONNX file"
    )
    _model_flag(p)
    p.add_argument("--vcf", required=True, help="VCF, plain or gzipped")
    p.add_argument("--genome", required=True, metavar="FASTA", help="reference genome")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help=".tsv or .h5")
    _scoring_options(
        p,
        ["raw", "delta", "log2fc", "max", "min", "spliceai"],
        "auto",
        reduce_help="score per variant (default delta: alternative minus "
        "reference)" + _PROFILE_HELP,
    )
    _profile_options(p)
    p.add_argument(
        "--length",
        type=int,
        metavar="L",
        help="window length, for a model whose input length is free (SpliceAI: "
        "10101 for its ±50 delta scores)",
    )
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
