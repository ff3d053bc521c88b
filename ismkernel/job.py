"""ISM (and the other analyses: window scans, pairwise maps, design) of a
sequence file into a results file: the ``ismkernel ism | scan | pairwise |
design`` jobs.

Sequences stream from the input in batches; each batch is scored with
:func:`ismkernel.ism`, reduced, and written before the next is read, so memory
is bounded by one batch whatever the number of sequences. See
:mod:`ismkernel.io.results` for the file and why an interrupted run can be
resumed.

Nothing is written until everything has been checked: every option, the
model, the whole input (and a digest of each sequence), the output's name,
format and directory, the free space, and the first batch's scores (which
catch what only a computation shows, such as ``log2fc`` of a negative
output). Only then is the file laid out; see :func:`run_job` for how an
existing ``OUT`` is kept safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ismkernel import config
from ismkernel.analyses import Designer, Pairwise, _pairs_within, _ScanRun, shuffles
from ismkernel.backends import resolve_backend
from ismkernel.distributed import cluster_client
from ismkernel.ensemble import Ensemble
from ismkernel.errors import InputError, IsmkernelError, OutputFileError
from ismkernel.inputs import (
    check_dtype,
    check_memory_budget,
    output_indices,
    seq_input_index,
)
from ismkernel.io.output import (
    OutputLock,
    atomic_file,
    check_output_path,
    check_space,
    is_no_space,
    publish,
    remove_quietly,
)
from ismkernel.io.results import (
    OutputLayout,
    ResultsFile,
    onehot_digest,
    results_bytes,
    sha256,
)
from ismkernel.io.sequences import _N_AS, ALPHABET, open_sequences
from ismkernel.ism import ISM_REDUCERS, check_reduce, fix_length, make_run
from ismkernel.model import Model, _from_ir, _to_ir, load_model
from ismkernel.reduce import (
    FIELDS,
    PROFILE_REDUCERS,
    REDUCERS,
    parse_range,
    profile_range,
    reduce_profile,
    reducer_name,
    select_output,
)

__all__ = [
    "IsmJob",
    "run_job",
    "check_scheduler",
    "parse_alternatives",
    "partial_path",
    "EXAMPLE_MODEL",
    "EXAMPLE_FASTA",
]

_DATA = os.path.join(os.path.dirname(__file__), "data")
#: The bundled example: a model trained on synthetic sequences with planted
#: AP-1 and GATA motifs, and test sequences (motif positions in their names).
EXAMPLE_MODEL = os.path.join(_DATA, "example_model.h5")
EXAMPLE_FASTA = os.path.join(_DATA, "example.fa")


def parse_alternatives(text: str) -> tuple[np.ndarray, list[str]]:
    """Rows for alternative letters: ``A C G T`` one-hot, ``N`` all zero."""
    letters = list(dict.fromkeys(str(text).upper()))
    rows = []
    for c in letters:
        if c in ALPHABET:
            rows.append(np.eye(4, dtype=np.float32)[ALPHABET.index(c)])
        elif c == "N":
            rows.append(np.zeros(4, dtype=np.float32))
        else:
            raise InputError(
                f"alternatives {text!r}: {c!r} is not one of A, C, G, T or N"
            )
    if not rows:
        raise InputError("alternatives must name at least one of A, C, G, T, N")
    return np.stack(rows), letters


@dataclass
class IsmJob:
    """What ``ismkernel ism`` does; every field maps to an option.

    ``model`` is a file, or a list of files: an ensemble (``--model a.h5
    --model b.h5``; ISM only), whose outputs are averaged before the
    reducer. ``format`` None takes it from the suffix of ``out`` (``.npz``:
    npz, else HDF5); ``backend`` None is ``auto`` for a new file and the
    recorded one on ``--resume``. ``memory_budget`` takes bytes or text such
    as ``"2G"``. ``over``/``around``: the rows a profile reducer (``max``,
    ``min``, ``spliceai``) reads.
    """

    model: str | list[str]
    input: str | None
    out: str
    positions: str | None = None
    alternatives: str = "ACGT"
    outputs: list[str] | None = None
    reduce: str | None = None  # None: delta, or max-abs for pairwise
    tasks: list[int] | None = None
    sum_over: str | None = None
    over: str | None = None
    around: int | None = None
    backend: str | None = None
    batch_size: int | None = None
    memory_budget: int | str | None = None
    threads: int | None = None
    center: bool = False
    n_as: str = "zero"
    format: str | None = None
    seqs_per_batch: int | None = None
    resume: bool = False
    force: bool = False
    quiet: bool = False
    dtype: str = config.DEFAULT_DTYPE
    bed: str | None = None
    genome: str | None = None
    scheduler: str | None = None
    workers: int | None = None
    #: ``ism``, ``scan``, ``pairwise`` or ``design``; the fields below belong
    #: to the other analyses.
    kind: str = "ism"
    motifs: list[str] | None = None  # scan --motif
    occlude: int | None = None  # scan --occlude W
    shuffle: int | None = None  # scan --shuffle W
    n_shuffles: int = 20  # scan --n
    kmer: int = 2  # scan --k
    seed: int = 0  # scan --seed
    max_distance: int | None = None  # pairwise --max-distance
    rounds: int | None = None  # design --rounds
    objective: str = "max"  # design --objective
    beam: int = 1  # design --beam
    tol: float | None = None  # design --tol
    summary: dict = field(default_factory=dict)
    #: Where the finished sequences are while the run writes (None before
    #: the file exists), and how many there are: for the message of an
    #: interrupted run.
    writing: str | None = field(default=None, init=False)
    n_finished: int = field(default=0, init=False)

    def where_results_are(self) -> str:
        """What an interrupted run leaves, and what to do next."""
        partial = partial_path(self.out)
        if self.writing is None:
            kept = f"; '{self.out}' is untouched" if os.path.exists(self.out) else ""
            return f"nothing was written{kept}"
        if self.writing == partial:
            return (
                f"'{self.out}' is untouched; the {self.n_finished} sequence(s) "
                f"finished so far are in '{partial}': rerun with --resume to finish "
                f"it (it then replaces '{self.out}')"
            )
        return (
            f"the {self.n_finished} sequence(s) finished so far are in "
            f"'{self.writing}': rerun with --resume to finish it"
        )


def partial_path(out: str) -> str:
    """Where ``--force`` writes while an older ``out`` stays in place; it is
    renamed over ``out`` when the run ends, and ``--resume`` continues it."""
    return os.fspath(out) + ".partial"


#: Output suffixes per format.
SUFFIXES = {"hdf5": (".h5", ".hdf5"), "npz": (".npz",)}


def _output_format(out: str, fmt: str | None, kind: str = "ism") -> str:
    """The format, from ``--format`` or the suffix of ``out``; they must agree."""
    suffix = os.path.splitext(out)[1].lower()
    if kind != "ism":
        return _analysis_format(out, suffix, kind)
    if fmt is None:
        fmt = "npz" if suffix in SUFFIXES["npz"] else "hdf5"
    if fmt not in SUFFIXES:
        raise InputError(f"--format must be hdf5 or npz, got {fmt!r}")
    if suffix in SUFFIXES[fmt]:
        return fmt
    stem = os.path.splitext(out)[0]
    if fmt == "npz":
        raise InputError(
            f"-o '{out}' does not end in .npz but --format npz writes an .npz "
            f"file: name it '{stem}.npz'"
            + (
                ", or drop --format npz to write HDF5"
                if suffix in (".h5", ".hdf5")
                else ""
            )
        )
    if suffix in SUFFIXES["npz"]:
        raise InputError(
            f"-o '{out}' ends in .npz but --format hdf5 writes HDF5: name it "
            f"'{stem}.h5', or pass --format npz"
        )
    raise InputError(
        f"-o '{out}': results files end in .h5 or .hdf5 (HDF5), or .npz (with "
        f"--format npz); name it '{stem}.h5'"
    )


def _analysis_format(out: str, suffix: str, kind: str) -> str:
    """Scans and pairwise maps write HDF5; a design HDF5 or FASTA."""
    if suffix in SUFFIXES["hdf5"]:
        return "hdf5"
    if kind == "design" and suffix in FASTA_SUFFIXES:
        return "fasta"
    stem = os.path.splitext(out)[0]
    also = " or FASTA (.fa, .fasta: the designed sequences)" if kind == "design" else ""
    raise InputError(
        f"-o '{out}': {kind} results are HDF5 (.h5, .hdf5){also}; name it '{stem}.h5'"
    )


#: The reducers of a pairwise job: per pair, over its alternatives' epistasis
#: (``max-abs``, ``l2``), all of the epistasis, or the double mutants' outputs.
PAIR_JOB_REDUCERS = ("max-abs", "l2", "epistasis", "raw")
FASTA_SUFFIXES = (".fa", ".fasta")


def _check_analysis(job: IsmJob) -> None:
    """The options of the scan, pairwise and design jobs."""
    kind = job.kind
    if kind == "scan":
        given = [
            f
            for f, v in (
                ("--motif", job.motifs),
                ("--occlude", job.occlude),
                ("--shuffle", job.shuffle),
            )
            if v is not None and v != []
        ]
        if len(given) != 1:
            raise InputError(
                "a scan writes one kind of pattern: give --motif (repeatable), "
                "--occlude W or --shuffle W"
                + (f", not {' and '.join(given)}" if given else "")
            )
        if job.motifs:
            motif_rows(job.motifs)
        for flag in ("occlude", "shuffle"):
            _positive(getattr(job, flag), "--" + flag)
        _positive(job.n_shuffles, "--n")
        _positive(job.kmer, "--k")
        if (
            isinstance(job.seed, bool)
            or not isinstance(job.seed, (int, np.integer))
            or job.seed < 0
        ):
            raise InputError(f"--seed must be a non-negative integer, got {job.seed!r}")
    elif kind == "pairwise":
        _positive(job.max_distance, "--max-distance")
    elif kind == "design":
        if job.rounds is None:
            raise InputError("design needs --rounds R, the edits to make")
        _positive(job.rounds, "--rounds")
        _positive(job.beam, "--beam")
        if job.objective not in ("max", "min"):
            raise InputError(f"--objective must be max or min, got {job.objective!r}")
        if job.tol is not None and not job.tol >= 0:
            raise InputError(f"--tol must be a non-negative number, got {job.tol!r}")
    else:
        raise InputError(
            f"unknown analysis {kind!r}; one of ism, scan, pairwise, design"
        )


def motif_rows(motifs: list[str]) -> tuple[np.ndarray, list[str]]:
    """One-hot rows ``(n_motifs, w, 4)`` of motifs of one length (``N``: an
    all-zero row), and their labels."""
    rows, labels = [], []
    for motif in motifs:
        text = str(motif).upper()
        bad = sorted(set(text) - set(ALPHABET + "N"))
        if not text or bad:
            raise InputError(
                f"--motif {motif!r}: motifs are letters A, C, G, T (N: an "
                "all-zero row)" + (f"; {bad[0]!r} is not one" if bad else "")
            )
        rows.append(
            np.stack(
                [
                    np.eye(4, dtype=np.float32)[ALPHABET.index(c)]
                    if c != "N"
                    else np.zeros(4, np.float32)
                    for c in text
                ]
            )
        )
        labels.append(text)
    widths = sorted({len(r) for r in rows})
    if len(widths) > 1:
        raise InputError(
            f"--motif: the motifs have lengths {widths}; a scan writes patterns of "
            "one width, so scan motifs of other lengths in separate runs"
        )
    return np.stack(rows), labels


def _positive(value: Any, flag: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{flag} must be a positive integer, got {value!r}")
    return int(value)


_PROTOCOLS = ("tcp", "tls", "ucx", "ws", "wss", "inproc")


def check_scheduler(address: Any) -> None:
    """A Dask scheduler address, ``[PROTOCOL://]HOST:PORT``, checked for its
    form (whether it answers is known only when it is called)."""
    if address is None:
        return
    wrong = InputError(
        f"--scheduler takes an address such as tcp://HOST:PORT, got {address!r}"
    )
    if not isinstance(address, str):
        raise wrong
    protocol, sep, rest = address.strip().partition("://")
    if not sep:
        protocol, rest = "tcp", address.strip()
    if protocol not in _PROTOCOLS:
        raise InputError(
            f"--scheduler {address!r}: unknown protocol {protocol!r} (one of "
            f"{', '.join(_PROTOCOLS)})"
        )
    if protocol == "inproc":
        return
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise wrong


def _check_options(job: IsmJob) -> None:
    """Every option on its own, and the output's name and directory: all that
    needs neither the model nor the input. Raises before anything is read."""
    if not isinstance(job.out, (str, os.PathLike)) or not os.fspath(job.out):
        raise InputError("give the results file with -o OUT")
    job.out = check_output_path(job.out, "-o")
    reducers = {"pairwise": PAIR_JOB_REDUCERS, "ism": ISM_REDUCERS}.get(
        job.kind, REDUCERS
    )
    if job.reduce is None:
        job.reduce = reducers[0] if job.kind == "pairwise" else "delta"
    if job.kind != "design":
        job.reduce = reducer_name(job.reduce, reducers, "--reduce")
    paths = _model_paths(job)
    if len(paths) > 1 and job.kind != "ism":
        raise InputError(
            f"an ensemble (--model given {len(paths)} times) scores ism and variants "
            f"jobs; {job.kind} takes one model"
        )
    if job.kind in ("ism", "scan"):
        check_reduce(job.reduce, job.sum_over, job.over, job.around)
    if job.kind != "ism":
        _check_analysis(job)
    job.format = _output_format(job.out, job.format, job.kind)
    if job.resume and job.force:
        raise InputError(
            "--resume and --force exclude each other: --resume continues OUT, "
            "--force starts it over"
        )
    if job.format in ("npz", "fasta") and job.resume:
        raise InputError("--resume works with HDF5 output only")
    for flag in ("batch_size", "threads", "seqs_per_batch", "workers"):
        _positive(getattr(job, flag), "--" + flag.replace("_", "-"))
    job.memory_budget = check_memory_budget(job.memory_budget, "--memory-budget")
    if job.scheduler is not None and job.workers is not None:
        raise InputError("give either --scheduler or --workers, not both")
    check_scheduler(job.scheduler)
    if job.backend is not None:
        resolve_backend(job.backend)
    check_dtype(job.dtype)
    if job.n_as not in _N_AS:
        raise InputError(f"--n-as must be one of {_N_AS}, got {job.n_as!r}")
    parse_alternatives(job.alternatives)
    parse_range(job.positions, "--positions")
    parse_range(job.sum_over, "--sum-over")
    if job.bed is not None and (job.genome is None or job.input is not None):
        raise InputError("--bed needs --genome and no INPUT file")
    if job.bed is None and job.input is None:
        raise InputError("give an INPUT sequence file, or --bed with --genome")
    _mode(job)  # fails now on an existing OUT; checked again under the lock


def _mode(job: IsmJob) -> str:
    """How this run treats ``OUT``: ``new`` (write it), ``in-place``
    (resume it), ``partial`` (resume an interrupted ``--force`` run) or
    ``beside`` (``--force`` over an existing ``OUT``: write the partial file
    and rename it over ``OUT`` at the end)."""
    out, partial = job.out, partial_path(job.out)
    has_out, has_partial = os.path.exists(out), os.path.exists(partial)
    if job.format in ("npz", "fasta"):
        if has_out and not job.force:
            raise InputError(f"'{out}' exists; pass --force to overwrite it")
        return "new"
    if job.resume:
        return "partial" if has_partial else "in-place" if has_out else "new"
    if job.force:
        return "beside" if has_out else "new"
    if has_out and has_partial:
        raise InputError(
            f"'{out}' exists, and '{partial}' holds an interrupted --force run for "
            f"it; pass --resume to continue that run (it then replaces '{out}'), or "
            "--force to start over"
        )
    if has_out:
        raise InputError(
            f"'{out}' exists; pass --resume to continue that run or --force to "
            "overwrite it"
        )
    if has_partial:
        raise InputError(
            f"'{partial}' holds an interrupted --force run for '{out}'; pass "
            "--resume to continue it, or --force to start over"
        )
    return "new"


def _axis_names(axes, window) -> list[str]:
    """Names of an output's axes after selection (``length``, ``task``)."""
    names = [f"out{i}" for i in range(len(axes.shape))]
    if axes.length is not None:
        names[axes.length] = "length"
    if axes.channels is not None:
        names[axes.channels] = "task"
    if window is not None:
        del names[axes.length]
    return names


def _model_paths(job: IsmJob) -> list[str]:
    """The model file, or an ensemble's files."""
    paths = job.model if isinstance(job.model, list | tuple) else [job.model]
    if not paths or not all(isinstance(p, str | os.PathLike) for p in paths):
        raise InputError(f"give the model file(s) with MODEL or --model, got {paths}")
    return [os.fspath(p) for p in paths]


def load_models(paths: list[str]) -> Model | Ensemble:
    """One model, or the ensemble of several (their shapes checked)."""
    models = [load_model(p) for p in paths]
    return models[0] if len(models) == 1 else Ensemble(models)


def _profile_layouts(model, picks, tasks, kind, n_pos, n_alts) -> list:
    """Layouts of a profile reducer's scores: the whole reference output, and
    per mutant its fields (per kept channel for max and min)."""
    layouts = []
    for k in picks:
        axes = model.output_axes[k]
        ref = np.zeros((1,) + tuple(axes.shape), dtype=np.float32)
        if axes.length is None:
            raise InputError(
                f"--reduce {kind} needs a profile output with a length axis; output "
                f"'{axes.name}' has shape {axes.shape}: choose a profile with --output"
            )
        zero = np.zeros(1, dtype=np.int64)
        fields = reduce_profile(
            ref, kind, axes, zero, zero + 1, zero, tasks=tasks, lead=1
        ).shape[1:]
        names = _axis_names(axes, None)
        rest = [] if kind == "spliceai" else [n for n in names if n != "length"]
        layouts.append(
            OutputLayout(
                axes.name,
                tuple(axes.shape),
                (n_pos, n_alts) + tuple(fields),
                ",".join(["seq", "position", "alternative"] + rest + ["field"]),
            )
        )
    return layouts


def _layouts(
    model: Model,
    picks,
    tasks,
    window,
    kind,
    n_pos,
    n_alts,
    head: tuple[str, str] = ("position", "alternative"),
) -> list:
    if kind in PROFILE_REDUCERS:
        return _profile_layouts(model, picks, tasks, kind, n_pos, n_alts)
    layouts = []
    for k in picks:
        axes = model.output_axes[k]
        probe = np.zeros((1,) + tuple(axes.shape), dtype=np.float32)
        ref_shape = select_output(probe, axes, 1, tasks, window).shape[1:]
        names = _axis_names(axes, window)
        head = [head[0]] if kind == "l2" else list(head)
        scores_shape = (n_pos,) + (() if kind == "l2" else (n_alts,)) + ref_shape
        layouts.append(
            OutputLayout(
                axes.name,
                tuple(ref_shape),
                scores_shape,
                ",".join(["seq"] + head + names),
            )
        )
    return layouts


def run_job(job: IsmJob, client: Any = None) -> dict:
    """Run ``job``; returns a summary (sequences scored, skipped, seconds).
    ``client``: a ``dask.distributed.Client`` to score the batches on.

    Every check comes before the first write (see the module docstring), and
    an existing ``OUT`` is never truncated:

    - one run at a time writes ``OUT``: ``OUT.lock`` beside it is held
      (``flock``) for the whole run, and a second run is refused, naming the
      first one's process;
    - a new file is laid out as ``OUT.tmp`` and renamed to ``OUT`` when its
      structure is complete, so a crash leaves no file or a valid one;
    - ``--force`` over an existing ``OUT`` writes ``OUT.partial`` and renames
      it over ``OUT`` only when the run ends: an interrupted ``--force`` run
      leaves ``OUT`` as it was, and ``--resume`` continues ``OUT.partial``;
    - ``--resume`` checks that the input's sequences have the digests the
      file recorded, and refuses a ``--backend`` other than the recorded one;
    - a full disk stops the run with the finished sequences kept (free space
      and ``--resume``); the free space is checked before the run starts.
    """
    start = time.perf_counter()
    _check_options(job)
    budget = job.memory_budget or config.CPU_MEMORY_BYTES

    paths = _model_paths(job)
    model = load_models(paths)
    label = "', '".join(paths)
    deferred = model.deferred_length
    specs = model.inputs if deferred else model.graph.input_specs
    if len(specs) != 1:
        raise InputError(
            f"'{label}' has {len(specs)} inputs; the command line scores "
            "single-input models (use the Python API, ismkernel.ism, for others)"
        )
    if deferred:  # the length comes from the sequences
        dims = specs[0].shape
        length, n_channels = None, 4 if 4 in dims else dims[-1]
    else:
        seq_input_index(specs, None)
        length, n_channels = specs[0].shape
    if n_channels != 4:
        raise InputError(
            f"'{label}' takes {n_channels} channels per position; sequence files "
            "give 4 (A, C, G, T)"
        )
    if job.bed is not None:
        from ismkernel.io.genome import RegionSource

        source = RegionSource(job.bed, job.genome, length, job.n_as)
        job.input = job.bed
    else:
        source = open_sequences(job.input, length, job.center, job.n_as)
    seq_len = source.length
    model = fix_length(model, seq_len)  # every output's shape known
    window = parse_range(job.positions, "--positions")
    if window is None:
        positions = np.arange(seq_len)
    else:
        end = seq_len if window[1] is None else window[1]
        if end > seq_len:
            raise InputError(
                f"--positions {job.positions} is out of range for sequences of length "
                f"{seq_len}"
            )
        positions = np.arange(window[0], end)
    alts, labels = parse_alternatives(job.alternatives)

    names = model.output_names
    if job.outputs and job.kind != "design":
        picks = output_indices(names, job.outputs, "--output")
        # Only the kept outputs are computed: drop what nothing else needs.
        model = model.select_outputs([names[k] for k in picks])
        names = model.output_names
    picks = list(range(len(names)))
    sum_window = parse_range(job.sum_over, "--sum-over")
    run = _make_run(job, model, source, positions, alts, labels, picks, sum_window)
    layouts = run.layouts

    # Sequences per batch: the raw and reduced results of a batch within a
    # quarter of the memory budget.
    spb = job.seqs_per_batch or int(
        max(1, min(256, budget // 4 // max(1, 3 * run.bytes_per_seq)))
    )

    meta = {
        "model_file": ",".join(os.path.basename(p) for p in paths),
        "model_sha256": ",".join(sha256(p) for p in paths),
        "input_file": os.path.basename(job.input),
        "reduce": job.reduce,
        "tasks": job.tasks,
        "sum_over": job.sum_over,
        "center": bool(job.center),
        "n_as": job.n_as,
        "seqs_per_batch": spb,
        "batch_size": job.batch_size,
        "memory_budget": job.memory_budget,
        # the backend that computes, not "auto", which may mean another one on
        # the machine that resumes the file (a GPU's): batches of one file are
        # computed alike
        "backend": resolve_backend(job.backend or "auto"),
        "dtype": job.dtype,
        "outputs": [names[k] for k in picks],
        "kind": job.kind,
        **run.meta,
    }
    if job.reduce in PROFILE_REDUCERS and job.kind == "ism":
        span = profile_range(job.reduce, job.over, job.around)
        meta.update(
            over=None if span.over is None else list(span.over),
            around=span.around,
            fields=list(FIELDS[job.reduce]),
        )

    if job.format == "npz":
        _check_npz(job, source, positions, labels, picks, layouts)
        with OutputLock(job.out):
            _mode(job)
            return _run_npz(run, spb, client, start)
    if job.format == "fasta":
        with OutputLock(job.out):
            _mode(job)
            return _run_fasta(run, spb, client, start)

    # The content of every sequence, before any file is touched: what
    # --resume checks, and what each batch is checked against as it is written.
    digests = [onehot_digest(row) for _, x in source.batches(256) for row in x]
    with OutputLock(job.out):
        return _run_hdf5(run, meta, layouts, digests, spb, client, start)


@dataclass
class _Run:
    """What a validated job scores: the model and source, what the file
    records as positions and alternatives (a scan's starts and patterns, a
    pairwise job's pairs), the outputs' layouts and the analysis's
    settings."""

    job: IsmJob
    model: Model
    source: Any
    positions: np.ndarray
    alts: np.ndarray
    labels: list[str]
    picks: list[int]
    sum_window: tuple | None
    layouts: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    #: mutants (or edits) per sequence, for the progress bar
    work: int = 0
    meta: dict = field(default_factory=dict)
    static: dict = field(default_factory=dict)
    per_seq: dict = field(default_factory=dict)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def kind(self) -> str:
        return self.job.kind

    @property
    def bytes_per_seq(self) -> int:
        """Bytes a batch holds per sequence, which sizes the batches. For ISM
        and scans, every mutant's whole outputs (what the sink's block holds
        before it reduces), whatever the reducer keeps: batches then do not
        change with the reducer, and ISM's are those they always were (other
        batches would round float32 results differently)."""
        if self.kind in ("ism", "scan"):
            n_pos, n_alts = len(self.positions), len(self.labels)
            # an ensemble holds the sum of its members' outputs and a member's
            copies = 2 if isinstance(self.model, Ensemble) else 1
            return copies * sum(
                4 * n_pos * n_alts * int(np.prod(self.model.output_axes[k].shape))
                for k in self.picks
            )
        return sum(4 * int(np.prod(lay.scores_shape)) for lay in self.layouts) + sum(
            8 * int(np.prod(shape)) for shape, _ in self.per_seq.values()
        )

    def scored(self, batches, bar, client):
        return _scored(self, batches, bar, client)


def _make_run(job, model, source, positions, alts, labels, picks, sum_window):
    """The scorer of ``job``'s analysis, with its file layout."""
    kind, length = job.kind, source.length
    run = _Run(job, model, source, positions, alts, labels, picks, sum_window)
    if kind == "ism":
        run.layouts = _layouts(
            model, picks, job.tasks, sum_window, job.reduce, len(positions), len(alts)
        )
        run.settings = dict(positions=positions, alternatives=alts)
        run.work = len(positions) * len(alts) * len(getattr(model, "members", [0]))
        return run
    if kind == "scan":
        if job.motifs:
            patterns, names = motif_rows(job.motifs)
        elif job.occlude:
            patterns, names = np.zeros((1, job.occlude, 4), np.float32), ["occlusion"]
        else:
            patterns = np.zeros((0, job.shuffle, 4), np.float32)
            names = [f"shuffle {i}" for i in range(job.n_shuffles)]
        width = patterns.shape[1]
        if width > length:
            raise InputError(
                f"windows of {width} rows do not fit sequences of length {length}"
            )
        starts = positions if job.positions is not None else np.arange(length)
        starts = starts[: length - width + 1] if job.positions is None else starts
        if starts.size and starts.max() > length - width:
            raise InputError(
                f"--positions {job.positions}: a window of {width} rows starting at "
                f"{int(starts.max())} runs off sequences of length {length} (the "
                f"last start is {length - width})"
            )
        run.positions, run.alts, run.labels = starts, patterns, names
        run.layouts = _layouts(
            model, picks, job.tasks, sum_window, job.reduce, len(starts),
            len(names), head=("start", "pattern"),
        )  # fmt: skip
        run.settings = dict(
            starts=starts,
            patterns=patterns if len(patterns) else None,
            width=width,
            shuffle=bool(job.shuffle),
            n_shuffles=job.n_shuffles,
            kmer=job.kmer,
            seed=job.seed,
        )
        run.work = len(starts) * len(names)
        run.meta = dict(width=width, patterns=names)
        if job.shuffle:
            run.meta.update(n_shuffles=job.n_shuffles, kmer=job.kmer, seed=job.seed)
        return run
    if kind == "pairwise":
        pairs = _pairs_within(positions, job.max_distance)
        if not len(pairs):
            raise InputError(
                f"no pair of the positions lies within --max-distance "
                f"{job.max_distance}"
            )
        per_pair = job.reduce in ("max-abs", "l2")
        layouts = []
        for k in picks:
            axes = model.output_axes[k]
            probe = np.zeros((1,) + tuple(axes.shape), dtype=np.float32)
            sel = select_output(probe, axes, 1, job.tasks, sum_window).shape[1:]
            head = (len(pairs),) + (() if per_pair else (len(alts), len(alts)))
            names_ = _axis_names(axes, sum_window)
            layouts.append(
                OutputLayout(
                    axes.name,
                    tuple(sel),
                    head + tuple(sel),
                    ",".join(
                        ["seq", "pair"]
                        + ([] if per_pair else ["alternative_i", "alternative_j"])
                        + names_
                    ),
                )
            )
        runner = Pairwise(
            model,
            pairs=pairs,
            alternatives=alts,
            tasks=job.tasks,
            sum_over=sum_window,
            **_engine_options(job),
        )
        probe = np.zeros((1, length, 4), dtype=np.float32)
        independent = runner.setup(_from_ir(probe, model.input_perms[0], 1))[
            "independent"
        ]
        _RUNNERS[run.token] = (model, runner)
        run.positions, run.layouts = pairs, layouts
        run.static = {"independent": independent}
        run.settings = dict(pairs=pairs, alternatives=alts)
        run.work = len(np.unique(pairs)) * len(alts) + len(pairs) * len(alts) ** 2
        run.meta = dict(max_distance=job.max_distance or 0)
        return run
    # design
    if job.outputs and len(job.outputs) > 1:
        raise InputError(
            "design maximises or minimises one output: give at most one --output"
        )
    names = model.output_names
    (k,) = output_indices(names, job.outputs[0] if job.outputs else 0, "--output")
    objective = dict(
        output=k, tasks=job.tasks, sum_over=job.sum_over, goal=job.objective
    )
    runner = Designer(
        model,
        objective,
        rounds=job.rounds,
        positions=positions,
        alternatives=alts,
        beam=job.beam,
        tol=job.tol,
        **_engine_options(job),
    )
    runner.run_for(
        _from_ir(np.zeros((1, length, 4), np.float32), model.input_perms[0], 1)
    )
    _RUNNERS[run.token] = (model, runner)
    run.picks = [k]
    run.layouts = [OutputLayout(names[k], (), (job.rounds + 1,), "seq,round")]
    run.per_seq = {
        "edits": ((job.rounds, 2), np.int64),
        "designed": ((length, 4), np.float32),
    }
    run.settings = dict(objective=objective, positions=positions, alternatives=alts)
    run.work = job.rounds * len(positions) * len(alts) * job.beam
    run.meta = dict(
        rounds=job.rounds,
        objective=job.objective,
        objective_output=names[k],
        beam=job.beam,
        tol=job.tol,
    )
    return run


def _engine_options(job: IsmJob) -> dict:
    return dict(
        backend=job.backend or "auto",
        batch_size=job.batch_size,
        memory_budget=job.memory_budget,
        threads=job.threads,
        dtype=job.dtype,
    )


def _resume_settings(job: IsmJob, results: ResultsFile) -> int:
    """Batching and backend as the file was written, so each batch is
    computed exactly as the interrupted run would have; a conflicting option
    is refused. Returns the sequences per batch."""
    how = results.how()
    given = {
        "seqs_per_batch": job.seqs_per_batch,
        "batch_size": job.batch_size,
        "memory_budget": job.memory_budget,
    }
    for key, value in given.items():
        if value is not None and how[key] is not None and int(how[key]) != value:
            raise InputError(
                f"cannot resume '{results.path}': it was written with "
                f"--{key.replace('_', '-')} {how[key]}, this run asks for {value}"
            )
    recorded = str(how["backend"] or "auto")
    try:
        engine = resolve_backend(recorded)
    except IsmkernelError:
        raise InputError(
            f"cannot resume '{results.path}': it was written with --backend "
            f"{recorded}, which this installation does not have"
        ) from None
    if job.backend is not None and resolve_backend(job.backend) != engine:
        raise InputError(
            f"cannot resume '{results.path}': it was written with --backend "
            f"{recorded}, this run asks for --backend {job.backend}; a resumed run "
            "computes as the first one did, so drop --backend (or --force to "
            "start over with the other backend)"
        )
    job.batch_size = None if how["batch_size"] is None else int(how["batch_size"])
    job.memory_budget = (
        None if how["memory_budget"] is None else int(how["memory_budget"])
    )
    job.backend = recorded
    return int(how["seqs_per_batch"])


def _check_rows_recorded(results: ResultsFile, meta: dict) -> None:
    """A resumed run reads the rows the file's profile reducer read."""
    for key in ("over", "around"):
        have = results.f.attrs.get(key, "none")
        want = meta.get(key)
        want = "none" if want is None else json.dumps(want)
        if str(have) != want:
            raise InputError(
                f"cannot resume '{results.path}': it was written with {key}={have}, "
                f"this run has {want}; rerun with --force to start over"
            )


def _run_hdf5(
    run: _Run,
    meta: dict,
    layouts: list[OutputLayout],
    digests: list[bytes],
    spb: int,
    client: Any,
    start: float,
) -> dict:
    """The HDF5 run proper, with ``OUT``'s lock held."""
    job, source = run.job, run.source
    out = job.out
    mode = _mode(job)  # again: another run may have finished since
    for stale in (out, partial_path(out)):  # layouts a killed run left
        remove_quietly(stale + ".tmp")
    target = partial_path(out) if mode in ("partial", "beside") else out
    results = None
    if mode in ("partial", "in-place"):
        results = ResultsFile.open_to_resume(
            target, meta, source.names, digests, run.positions, run.alts, run.kind
        )
        try:
            spb = _resume_settings(job, results)
            _check_rows_recorded(results, meta)
        except BaseException:
            results.close()
            raise
        n_rows = len(results.pending())
        job.writing, job.n_finished = target, len(source) - n_rows
    else:
        n_rows = len(source)
        job.backend = job.backend or "auto"
    try:
        extra = 1 << 20 if results is None else 0  # names, metadata
        extra += n_rows * sum(
            8 * int(np.prod(shape)) for shape, _ in run.per_seq.values()
        )
        check_space(
            target,
            results_bytes(n_rows, source.length, layouts) + extra,
            f" for {n_rows} sequence(s)"
            + (
                f" (beside '{out}', which stays until it is done)"
                if mode == "beside"
                else ""
            ),
        )
    except BaseException:
        if results is not None:
            results.close()
        raise

    pending = results.pending() if results is not None else np.arange(len(source))
    # Whole batches of the original layout, so a resumed run computes each
    # batch exactly as an uninterrupted one would. (All of the original
    # batches but the file's last are full, so cutting the selection every
    # spb sequences gives those batches.)
    select = np.concatenate(
        [
            np.arange(b * spb, min((b + 1) * spb, len(source)))
            for b in np.unique(pending // spb)
        ]
        or [np.zeros(0, dtype=np.int64)]
    )
    bar = _bar(job, len(select) * run.work)
    done = 0
    created = False
    try:
        with cluster_client(job.scheduler, job.workers, client) as client:
            batches = source.batches(spb, select=select)
            for idx, x, scored in run.scored(batches, bar, client):
                refs, scores = scored[:2]
                if results is None:
                    # Laid out only now: the first batch has been scored, so
                    # whatever only a computation can refuse was refused
                    # before any file was made.
                    results = ResultsFile.create(
                        target,
                        meta=meta,
                        names=source.names,
                        digests=digests,
                        seq_len=source.length,
                        positions=run.positions,
                        alternatives=run.alts,
                        labels=run.labels,
                        outputs=layouts,
                        kind=run.kind,
                        static=run.static,
                        per_seq=run.per_seq,
                    )
                    created = True
                    job.writing = target
                    if target != partial_path(out):
                        # A partial file of an earlier --force run: --force
                        # started over and wrote OUT itself.
                        remove_quietly(partial_path(out))
                results.write(
                    idx, x, refs, scores, scored[2] if len(scored) > 2 else None
                )
                done += len(idx)
                job.n_finished += len(idx)
        if results is not None:
            results.close()
        if target != out:
            publish(target, out)
        job.writing = out
    except BaseException as err:
        _stop(job, results, created, target, err)
        raise
    finally:
        if bar is not None:
            bar.close()
    job.summary = {
        "n_seqs": len(source),
        "scored": done,
        "skipped": len(source) - len(select),
        "seconds": time.perf_counter() - start,
        "out": out,
        "continued": target if mode in ("partial", "in-place") else None,
    }
    return job.summary


def _stop(job: IsmJob, results, created: bool, target: str, err: BaseException):
    """Close the file of a run that stopped on ``err``. A full disk becomes an
    :class:`OutputFileError` saying where the finished sequences are; a file
    this run made that holds nothing is removed."""
    n_done = job.n_finished
    if results is not None:
        with contextlib.suppress(Exception):
            n_done = results.n_done()
        with contextlib.suppress(Exception):
            results.close()
    job.n_finished = n_done
    if isinstance(err, OSError) and is_no_space(err):
        if results is None:
            raise OutputFileError(
                f"no space left on device; nothing was written to '{job.out}'; free "
                "space and run again"
            ) from None
        kept = f" ('{job.out}' is untouched)" if target != job.out else ""
        raise OutputFileError(
            f"no space left on device; {n_done} sequences are finished in "
            f"'{target}'{kept}; free space and --resume"
        ) from None
    if created and n_done == 0 and not isinstance(err, KeyboardInterrupt):
        remove_quietly(target)
        job.writing = None


def progress_bar(total: int, unit: str = "mutant", desc: str = "ISM", quiet=False):
    """The command line's tqdm bar: rate and time left; silent with ``quiet``
    or when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        unit=unit,
        unit_scale=True,
        desc=desc,
        disable=True if quiet else None,  # None: silent when not a terminal
        dynamic_ncols=True,
    )


def _bar(job: IsmJob, total: int):
    return progress_bar(total, quiet=job.quiet)


#: The analysis runners of the jobs in this process (one per job, so each
#: plan is built once per job), by the job's token.
_RUNNERS: dict[str, tuple] = {}


def _runner(model, settings: dict):
    """The runner of the job ``settings`` belongs to, made the first time
    this process scores one of its batches."""
    token = settings["token"]
    hit = _RUNNERS.get(token)
    if hit is not None and hit[0] is model:
        return hit[1]
    if len(_RUNNERS) > 8:
        _RUNNERS.clear()
    options = {k: settings[k] for k in ENGINE_KEYS}
    kind = settings["kind"]
    if kind == "ism":
        run = make_run(
            model,
            positions=settings["positions"],
            alternatives=settings["alternatives"],
            output_rows=settings["output_rows"],
            **options,
        )
    elif kind == "scan":
        patterns = settings["patterns"]
        if patterns is None:  # shuffles: each batch gives its own
            n_starts = len(settings["starts"])
            patterns = np.zeros(
                (n_starts, settings["n_shuffles"], settings["width"], 4), np.float32
            )
        run = _ScanRun(
            model,
            patterns,
            settings["starts"],
            output_rows=settings["output_rows"],
            **options,
        )
    elif kind == "pairwise":
        run = Pairwise(
            model,
            pairs=settings["pairs"],
            alternatives=settings["alternatives"],
            tasks=settings["tasks"],
            sum_over=settings["sum_window"],
            **options,
        )
    else:
        run = Designer(
            model,
            settings["objective"],
            rounds=settings["rounds"],
            positions=settings["positions"],
            alternatives=settings["alternatives"],
            beam=settings["beam"],
            tol=settings["tol"],
            **options,
        )
    _RUNNERS[token] = (model, run)
    return run


#: The engine settings every runner takes.
ENGINE_KEYS = ("backend", "batch_size", "memory_budget", "threads", "dtype")


def batch_shuffles(x: np.ndarray, settings: dict) -> np.ndarray:
    """Each sequence's own window shuffles, ``(n, starts, n_shuffles, w,
    4)``, seeded by the job's seed and the sequence's content: the same in
    any batch, on any worker, and when a run is resumed."""
    out = []
    for row in x:
        digest = int.from_bytes(onehot_digest(row)[:8], "little")
        rng = np.random.default_rng([settings["seed"], digest])
        out.append(
            shuffles(
                row,
                settings["starts"],
                settings["width"],
                settings["n_shuffles"],
                k=settings["kmer"],
                seed=rng,
            )
        )
    return np.stack(out)


def _score_batch(model, x, settings: dict, progress=False):
    """References and scores of one batch ``x`` (IR layout), and for a design
    its per-sequence datasets: what a worker computes."""
    run = _runner(model, settings)
    xm = _from_ir(x, model.input_perms[0], 1)
    kind = settings["kind"]
    if kind in ("ism", "scan"):
        values = None
        if kind == "scan" and settings["shuffle"]:
            values = batch_shuffles(x, settings)
        rows = {}
        if kind == "ism":
            rows = dict(over=settings["over"], around=settings["around"])
        res = run(
            xm,
            progress=progress,
            reduce=settings["reduce"],
            tasks=settings["tasks"],
            sum_over=settings["sum_window"],
            keep_outputs=False,
            values=values,
            **rows,
        )
        picks = settings["picks"]
        return [res.score_reference[k] for k in picks], [res.scores[k] for k in picks]
    if kind == "pairwise":
        res = run(xm, progress=progress)
        kind = settings["reduce"]
        n_out = len(res.outputs)
        if kind == "epistasis":
            scores = [res.epistasis(k) for k in range(n_out)]
        elif kind == "raw":
            scores = res.outputs
        else:
            scores = [res.reduce(kind, k) for k in range(n_out)]
        return res.reference, scores
    res = run(xm, progress=progress)
    perm = model.input_perms[0]
    extra = {"edits": res.edits, "designed": _to_ir(res.sequences, perm, 1)}
    return [res.objective[:, 0]], [res.objective], extra


def _wanted_rows(
    model, picks, sum_window, span=None, positions=None
) -> dict[int, tuple[int, int]]:
    """Rows of profile outputs the scores read: with --sum-over, the summed
    range; for a profile reducer (``span``), the rows any mutated position
    reads. The planner skips the rest."""
    rows = {}
    seq_len = model.graph.input_specs[0].shape[0]
    for k, spec in enumerate(model.graph.output_specs):
        if len(spec.shape) != 2 or k not in picks:
            continue
        if span is not None:
            rows[k] = span.hull(positions, seq_len, spec.shape[0], spec.name)
        elif sum_window is not None:
            end = spec.shape[0] if sum_window[1] is None else sum_window[1]
            rows[k] = (sum_window[0], end)
    return rows


def _scored(run: _Run, batches, bar, client=None):
    """``(idx, x, scored)`` per batch, in input order: in this process, or on
    the Dask ``client``'s workers (each makes the job's runner once)."""
    job, model = run.job, run.model
    span = None
    if run.kind == "ism" and job.reduce in PROFILE_REDUCERS:
        span = profile_range(job.reduce, job.over, job.around)
    settings = dict(
        kind=run.kind,
        token=run.token,
        picks=run.picks,
        tasks=job.tasks,
        sum_window=run.sum_window,
        reduce=job.reduce,
        over=job.over,
        around=job.around,
        output_rows=(
            _wanted_rows(model, run.picks, run.sum_window, span, run.positions)
            if run.kind in ("ism", "scan")
            else None
        ),
        rounds=job.rounds,
        beam=job.beam,
        tol=job.tol,
        **_engine_options(job),
        **run.settings,
    )
    if client is None:
        update = bar.update if bar is not None else False
        for idx, x in batches:
            yield idx, x, _score_batch(model, x, settings, update)
        return
    from collections import deque

    from ismkernel.distributed import map_ordered

    sent: deque = deque()

    def chunks():
        for idx, x in batches:
            sent.append((idx, x))
            yield x

    for result in map_ordered(client, _score_batch, model, chunks(), settings):
        idx, x = sent.popleft()
        if bar is not None:
            bar.update(len(idx) * run.work)
        yield idx, x, result


def _check_npz(job, source, positions, labels, picks, layouts) -> None:
    """The npz layout's demands, and its room on the disk, before scoring."""
    if len(picks) != 1 or np.prod(layouts[0].reference_shape) != 1:
        raise InputError(
            "--format npz writes one score per position and base: choose one "
            "output with --output and make it a single value with --tasks and, "
            "for a profile, --sum-over"
        )
    if labels != list(ALPHABET) or len(positions) != source.length:
        raise InputError(
            "--format npz needs every position and --alternatives ACGT (the "
            "layout TF-MoDISco reads)"
        )
    if job.reduce == "l2":
        raise InputError("--format npz needs a per-base reducer, not l2")
    n = len(source)
    names = sum(len(name) for name in source.names) * 4 + 64 * n
    check_space(job.out, 2 * n * 4 * source.length * 4 + names + (1 << 16))


def _run_npz(run: _Run, spb: int, client: Any, start: float) -> dict:
    """Scores as (n_seqs, 4, seq_len) for TF-MoDISco: one scalar output, every
    position, alternatives A, C, G, T. Written whole at the end, under a
    temporary name renamed over ``OUT``."""
    job, source = run.job, run.source
    job.backend = job.backend or "auto"
    n, length = len(source), source.length
    onehot = np.zeros((n, 4, length), dtype=np.float32)
    scores = np.zeros((n, 4, length), dtype=np.float32)
    bar = _bar(job, n * len(run.positions) * 4)
    try:
        with cluster_client(job.scheduler, job.workers, client) as client:
            scored = list(run.scored(source.batches(spb), bar, client))
        for idx, x, (_, sc) in scored:
            onehot[idx] = x.transpose(0, 2, 1)
            scores[idx] = sc[0].reshape(len(idx), length, 4).transpose(0, 2, 1)
    finally:
        if bar is not None:
            bar.close()
    with atomic_file(job.out, " (an npz file is written whole at the end)") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, onehot=onehot, scores=scores, names=np.array(source.names))
    job.writing = job.out
    job.n_finished = n
    job.summary = {
        "n_seqs": n,
        "scored": n,
        "skipped": 0,
        "seconds": time.perf_counter() - start,
        "out": job.out,
        "continued": None,
    }
    return job.summary


def _run_fasta(run: _Run, spb: int, client: Any, start: float) -> dict:
    """A design's sequences as FASTA: each record named as its input, with the
    objective before and after and the edits in the header. Written whole at
    the end, under a temporary name renamed over ``OUT``."""
    job, source = run.job, run.source
    job.backend = job.backend or "auto"
    records = {}
    bar = _bar(job, len(source) * run.work)
    try:
        with cluster_client(job.scheduler, job.workers, client) as client:
            for idx, _, (_, scores, extra) in run.scored(
                source.batches(spb), bar, client
            ):
                for row, i in enumerate(idx):
                    records[int(i)] = (
                        scores[0][row],
                        extra["edits"][row],
                        extra["designed"][row],
                    )
    finally:
        if bar is not None:
            bar.close()
    labels = run.labels
    with atomic_file(job.out, " (a FASTA file is written whole at the end)") as tmp:
        with open(tmp, "w") as f:
            for i, name in enumerate(source.names):
                objective, edits, designed = records[i]
                done = [f"{p}:{labels[a]}" for p, a in edits if p >= 0]
                kept = objective[~np.isnan(objective)]
                f.write(
                    f">{name} objective={kept[0]:.6g}->{kept[-1]:.6g} "
                    f"edits={','.join(done) or 'none'}\n"
                )
                letters = np.array(list(ALPHABET + "N"))
                rows = np.where(designed.max(axis=1) > 0, designed.argmax(axis=1), 4)
                f.write("".join(letters[rows]) + "\n")
    job.writing = job.out
    job.n_finished = len(source)
    job.summary = {
        "n_seqs": len(source),
        "scored": len(source),
        "skipped": 0,
        "seconds": time.perf_counter() - start,
        "out": job.out,
        "continued": None,
    }
    return job.summary
