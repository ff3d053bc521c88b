"""ISM of a sequence file into a results file: the ``ismkernel ism`` job.

Sequences stream from the input in batches; each batch is scored with
:func:`ismkernel.ism`, reduced, and written before the next is read, so memory
is bounded by one batch whatever the number of sequences. See
:mod:`ismkernel.io.results` for the file and why an interrupted run can be
resumed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ismkernel import config
from ismkernel.distributed import cluster_client
from ismkernel.errors import InputError
from ismkernel.inputs import check_positive_int, output_indices, seq_input_index
from ismkernel.io.results import OutputLayout, ResultsFile, sha256
from ismkernel.io.sequences import ALPHABET, open_sequences
from ismkernel.ism import ism
from ismkernel.model import Model, _from_ir, load_model
from ismkernel.reduce import REDUCERS, parse_range, reduce_scores, select_output

__all__ = ["IsmJob", "run_job", "parse_alternatives", "EXAMPLE_MODEL", "EXAMPLE_FASTA"]

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
    """What ``ismkernel ism`` does; every field maps to an option."""

    model: str
    input: str | None
    out: str
    positions: str | None = None
    alternatives: str = "ACGT"
    outputs: list[str] | None = None
    reduce: str = "delta"
    tasks: list[int] | None = None
    sum_over: str | None = None
    backend: str = "auto"
    batch_size: int | None = None
    memory_budget: int | None = None
    threads: int | None = None
    center: bool = False
    n_as: str = "zero"
    format: str = "hdf5"
    seqs_per_batch: int | None = None
    resume: bool = False
    force: bool = False
    quiet: bool = False
    dtype: str = config.DEFAULT_DTYPE
    bed: str | None = None
    genome: str | None = None
    scheduler: str | None = None
    workers: int | None = None
    summary: dict = field(default_factory=dict)


def _layouts(model: Model, picks, tasks, window, kind, n_pos, n_alts) -> list:
    layouts = []
    for k in picks:
        axes = model.output_axes[k]
        probe = np.zeros((1,) + tuple(axes.shape), dtype=np.float32)
        ref_shape = select_output(probe, axes, 1, tasks, window).shape[1:]
        names = [f"out{i}" for i in range(len(axes.shape))]
        if axes.length is not None:
            names[axes.length] = "length"
        if axes.channels is not None:
            names[axes.channels] = "task"
        if window is not None:
            del names[axes.length]
        head = ["position"] if kind == "l2" else ["position", "alternative"]
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
    ``client``: a ``dask.distributed.Client`` to score the batches on."""
    import time

    if job.reduce not in REDUCERS:
        raise InputError(f"--reduce must be one of {REDUCERS}, got {job.reduce!r}")
    if job.format not in ("hdf5", "npz"):
        raise InputError(f"--format must be hdf5 or npz, got {job.format!r}")
    if job.format == "npz" and job.resume:
        raise InputError("--resume works with HDF5 output only")
    check_positive_int(job.batch_size, "--batch-size")
    budget = check_positive_int(job.memory_budget, "--memory-budget") or (
        config.CPU_MEMORY_BYTES
    )

    model = load_model(job.model)
    deferred = model.deferred_length
    specs = model.inputs if deferred else model.graph.input_specs
    if len(specs) != 1:
        raise InputError(
            f"'{job.model}' has {len(specs)} inputs; the command line scores "
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
            f"'{job.model}' takes {n_channels} channels per position; sequence files "
            "give 4 (A, C, G, T)"
        )
    if job.bed is not None:
        if job.genome is None or job.input is not None:
            raise InputError("--bed needs --genome and no INPUT file")
        from ismkernel.io.genome import RegionSource

        source = RegionSource(job.bed, job.genome, length, job.n_as)
        job.input = job.bed
    else:
        if job.input is None:
            raise InputError("give an INPUT sequence file, or --bed with --genome")
        source = open_sequences(job.input, length, job.center, job.n_as)
    seq_len = source.length
    model = model.with_length(seq_len)
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
    if job.outputs:
        picks = output_indices(names, job.outputs, "--output")
        # Only the kept outputs are computed: drop what nothing else needs.
        model = model.select_outputs([names[k] for k in picks])
        names = model.output_names
    picks = list(range(len(names)))
    sum_window = parse_range(job.sum_over, "--sum-over")
    layouts = _layouts(
        model, picks, job.tasks, sum_window, job.reduce, len(positions), len(alts)
    )

    # Sequences per batch: the raw and reduced results of a batch within a
    # quarter of the memory budget.
    per_seq = sum(
        4 * len(positions) * len(alts) * int(np.prod(model.output_axes[k].shape))
        for k in picks
    )
    spb = check_positive_int(job.seqs_per_batch, "--seqs-per-batch") or int(
        max(1, min(256, budget // 4 // max(1, 3 * per_seq)))
    )

    meta = {
        "model_file": os.path.basename(job.model),
        "model_sha256": sha256(job.model),
        "input_file": os.path.basename(job.input),
        "reduce": job.reduce,
        "tasks": job.tasks,
        "sum_over": job.sum_over,
        "center": bool(job.center),
        "n_as": job.n_as,
        "seqs_per_batch": spb,
        "batch_size": job.batch_size,
        "memory_budget": job.memory_budget,
        "backend": job.backend,
        "dtype": job.dtype,
        "outputs": [names[k] for k in picks],
    }

    if job.format == "npz":
        return _run_npz(
            job,
            model,
            source,
            positions,
            alts,
            labels,
            picks,
            sum_window,
            layouts,
            spb,
            client,
        )

    if os.path.exists(job.out) and not (job.resume or job.force):
        raise InputError(
            f"'{job.out}' exists; pass --resume to continue that run or --force to "
            "overwrite it"
        )
    if job.resume and os.path.exists(job.out):
        results = ResultsFile.open_to_resume(
            job.out, meta, source.names, positions, alts
        )
        # Batching and backend as the file was written, so each batch is
        # computed exactly as the interrupted run would have.
        how = results.how()
        given = {
            "seqs_per_batch": job.seqs_per_batch,
            "batch_size": job.batch_size,
            "memory_budget": job.memory_budget,
        }
        for key, value in given.items():
            if value is not None and how[key] is not None and int(how[key]) != value:
                results.close()
                raise InputError(
                    f"cannot resume '{job.out}': it was written with "
                    f"--{key.replace('_', '-')} {how[key]}, this run asks for {value}"
                )
        spb = int(how["seqs_per_batch"])
        job.batch_size = None if how["batch_size"] is None else int(how["batch_size"])
        job.memory_budget = (
            None if how["memory_budget"] is None else int(how["memory_budget"])
        )
        job.backend = str(how["backend"])
    else:
        results = ResultsFile.create(
            job.out,
            meta=meta,
            names=source.names,
            seq_len=seq_len,
            positions=positions,
            alternatives=alts,
            labels=labels,
            outputs=layouts,
        )
    start = time.perf_counter()
    with results:
        pending = results.pending()
        # Whole batches of the original layout, so a resumed run computes
        # each batch exactly as an uninterrupted one would.
        # (All of the original batches but the file's last are full, so
        # cutting the selection every spb sequences gives those batches.)
        select = np.concatenate(
            [
                np.arange(b * spb, min((b + 1) * spb, len(source)))
                for b in np.unique(pending // spb)
            ]
            or [np.zeros(0, dtype=np.int64)]
        )
        bar = _bar(job, len(select) * len(positions) * len(alts))
        done = 0
        try:
            with cluster_client(job.scheduler, job.workers, client) as client:
                batches = source.batches(spb, select=select)
                for idx, x, (refs, scores) in _scored(
                    job, model, batches, positions, alts, picks, sum_window, bar, client
                ):
                    results.write(idx, x, refs, scores)
                    done += len(idx)
        finally:
            if bar is not None:
                bar.close()
    seconds = time.perf_counter() - start
    job.summary = {
        "n_seqs": len(source),
        "scored": done,
        "skipped": len(source) - len(select),
        "seconds": seconds,
        "out": job.out,
    }
    return job.summary


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


def _score_batch(model, x, settings: dict, progress=False):
    """References and reduced scores of one batch ``x`` (IR layout): what a
    worker computes."""
    res = ism(
        model,
        _from_ir(x, model.input_perms[0], 1),
        positions=settings["positions"],
        alternatives=settings["alternatives"],
        backend=settings["backend"],
        batch_size=settings["batch_size"],
        memory_budget=settings["memory_budget"],
        threads=settings["threads"],
        dtype=settings["dtype"],
        progress=progress,
        output_rows=settings["output_rows"],
    )
    refs, scores = [], []
    for k in settings["picks"]:
        mut, ref = res.selected(k, settings["tasks"], settings["sum_window"])
        scores.append(reduce_scores(mut, ref, settings["reduce"], res.output_names[k]))
        refs.append(ref)
    return refs, scores


def _wanted_rows(model, picks, sum_window) -> dict[int, tuple[int, int]]:
    """Rows of profile outputs the scores read: with --sum-over, the summed
    range. The planner skips the rest."""
    rows = {}
    for k, spec in enumerate(model.graph.output_specs):
        if len(spec.shape) != 2 or k not in picks:
            continue
        if sum_window is not None:
            end = spec.shape[0] if sum_window[1] is None else sum_window[1]
            rows[k] = (sum_window[0], end)
    return rows


def _scored(job, model, batches, positions, alts, picks, sum_window, bar, client=None):
    """``(idx, x, (refs, scores))`` per batch, in input order: in this process,
    or on the Dask ``client``'s workers."""
    settings = dict(
        positions=positions,
        alternatives=alts,
        backend=job.backend,
        batch_size=job.batch_size,
        memory_budget=job.memory_budget,
        threads=job.threads,
        dtype=job.dtype,
        picks=picks,
        tasks=job.tasks,
        sum_window=sum_window,
        reduce=job.reduce,
        output_rows=_wanted_rows(model, picks, sum_window),
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
            bar.update(len(idx) * len(positions) * len(alts))
        yield idx, x, result


def _run_npz(
    job,
    model,
    source,
    positions,
    alts,
    labels,
    picks,
    sum_window,
    layouts,
    spb,
    client=None,
):
    """Scores as (n_seqs, 4, seq_len) for TF-MoDISco: one scalar output, every
    position, alternatives A, C, G, T."""
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
    if os.path.exists(job.out) and not job.force:
        raise InputError(f"'{job.out}' exists; pass --force to overwrite it")
    n, length = len(source), source.length
    onehot = np.zeros((n, 4, length), dtype=np.float32)
    scores = np.zeros((n, 4, length), dtype=np.float32)
    bar = _bar(job, n * len(positions) * 4)
    try:
        with cluster_client(job.scheduler, job.workers, client) as client:
            scored = list(
                _scored(
                    job,
                    model,
                    source.batches(spb),
                    positions,
                    alts,
                    picks,
                    sum_window,
                    bar,
                    client,
                )
            )
        for idx, x, (_, sc) in scored:
            onehot[idx] = x.transpose(0, 2, 1)
            scores[idx] = sc[0].reshape(len(idx), length, 4).transpose(0, 2, 1)
    finally:
        if bar is not None:
            bar.close()
    tmp = job.out + ".tmp.npz"
    np.savez(tmp, onehot=onehot, scores=scores, names=np.array(source.names))
    os.replace(tmp, job.out)
    job.summary = {"n_seqs": n, "scored": n, "skipped": 0, "out": job.out}
    return job.summary
