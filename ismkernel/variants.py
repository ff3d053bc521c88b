"""Variant effects: each SNV scored in the model-length genome window centred
on it, reference allele against alternative allele.

Every variant of a window is one mutation at the window's centre, so a
window costs one reference pass plus the incremental cost of its mutants; the
alleles of a multi-allelic record share the window and its reference pass.
Windows run in batches through one ISM run per job (so the plan is built
once, per member of an ensemble) with the four bases as alternatives: the
reference base is copied, and only the alternative alleles the VCF names are
computed.

The profile reducers (``max``, ``min``, ``spliceai``) read the change of a
profile output over its rows (``over``) or the rows within ``around`` of the
variant, positions reported relative to it: with an ensemble of SpliceAI's
five models, ``length=10101`` and ``reduce="spliceai"``, the scores are its
package's delta scores (``-D 50``) on the + strand, without its gene
annotation.

A variant that cannot be scored is kept in the output, in its place, with
the reason: an indel or other non-SNV allele, an allele that is not A, C, G
or T, REF equal to ALT, a contig the genome lacks, a window running off the
contig, or a REF that does not match the genome.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ismkernel.ensemble import Ensemble, as_model
from ismkernel.errors import InputError
from ismkernel.inputs import check_memory_budget, output_indices
from ismkernel.io.genome import Genome, Variant, read_vcf, window_for
from ismkernel.io.output import atomic_file
from ismkernel.io.sequences import ALPHABET, encode
from ismkernel.ism import fix_length, make_run
from ismkernel.model import Model, _from_ir
from ismkernel.reduce import (
    FIELDS,
    PROFILE_REDUCERS,
    REDUCERS,
    check_profile_options,
    parse_range,
    profile_range,
    reduce_profile_outputs,
    reduce_scores,
    reducer_name,
    select_output,
)

__all__ = [
    "score_variants",
    "VariantScores",
    "write_tsv",
    "write_h5",
    "VARIANT_REDUCERS",
]

#: Reducers that make sense for one alternative per variant.
VARIANT_REDUCERS = ("raw", "delta", "log2fc") + PROFILE_REDUCERS


@dataclass
class VariantScores:
    """Per variant (VCF order, multi-allelic records split): ``status``
    (``"scored"`` or ``"skipped"``), ``reason``, and per chosen output the
    reference prediction, the alternative's, and the reducer's score (NaN
    where skipped). A profile reducer's scores end in an axis of its
    :data:`~ismkernel.reduce.FIELDS` (positions relative to the variant
    with ``around``, rows of the output with ``over``)."""

    variants: list[Variant]
    status: list[str]
    reason: list[str]
    output_names: list[str]
    reference: list[np.ndarray]
    alternative: list[np.ndarray]
    scores: list[np.ndarray]
    reduce: str
    rc: bool
    stats: dict = field(default_factory=dict)


def _check(v: Variant, genome: Genome, length: int) -> tuple[int, str]:
    if v.alt in (".", "*") or v.alt.startswith("<") or "[" in v.alt or "]" in v.alt:
        return 0, f"ALT {v.alt!r} is not a sequence allele (only SNVs are scored)"
    if len(v.ref) != len(v.alt):
        return 0, f"indel {v.ref}>{v.alt}: only SNVs are scored"
    if len(v.ref) != 1:
        return 0, f"multi-nucleotide variant {v.ref}>{v.alt}: only SNVs are scored"
    for allele in (v.ref, v.alt):
        if allele not in ALPHABET:
            return 0, f"allele {allele!r} is not A, C, G or T"
    if v.ref == v.alt:
        return 0, "ALT equals REF"
    start, reason = window_for(genome, v.chrom, v.pos - 1, length)
    if reason:
        return start, reason
    base = genome.fetch(v.chrom, v.pos - 1, v.pos)
    if base != v.ref:
        return start, (
            f"REF {v.ref} does not match the genome base {base} at {v.chrom}:{v.pos}"
        )
    return start, ""


#: The ISM runs of the variant jobs in this process, by job token: each
#: job's plans are built once, also on the workers of a cluster.
_RUNS: dict[str, tuple] = {}


def _runs(model, center: int, length: int, how: dict, rc: bool, token: str):
    """The job's forward run (the four bases at ``center``) and, with ``rc``,
    its reverse-complement run, made the first time this process needs them."""
    hit = _RUNS.get(token)
    if hit is not None and hit[0] is model:
        return hit[1]
    if len(_RUNS) > 8:
        _RUNS.clear()
    eye = np.eye(4, dtype=np.float32)
    fwd = make_run(model, positions=[center], alternatives=eye, **how)
    # row b of the reverse run holds the complement of base b
    back = (
        make_run(model, positions=[length - 1 - center], alternatives=eye[::-1], **how)
        if rc
        else None
    )
    _RUNS[token] = (model, (fwd, back))
    return fwd, back


def _score_windows(
    model: Model | Ensemble,
    batch: tuple[np.ndarray, np.ndarray],
    center: int,
    how: dict,
    rc: bool,
    token: str,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Reference outputs ``(n, *out)`` and the four base mutants at ``center``
    ``(n, 4, *out)`` of windows ``x`` (IR layout), per model output, where
    ``batch`` is ``(x, wanted)`` and ``wanted`` ``(n, 4)`` marks the bases
    to compute (the others are left undefined); with ``rc``, averaged with
    the reverse-complement windows. ``how``: the backend options of
    :func:`ismkernel.ism`."""
    x, wanted = batch
    length = x.shape[1]
    fwd_run, back_run = _runs(model, center, length, how, rc, token)
    skip = ~wanted[:, None, :]
    fwd = fwd_run(_from_ir(x, model.input_perms[0], 1), skip=skip)
    refs = list(fwd.reference)
    muts = [o[:, 0] for o in fwd.outputs]
    if rc:
        x_rc = np.ascontiguousarray(
            x[:, ::-1, ::-1]
        )  # ACGT order: complement = reversed
        back = back_run(_from_ir(x_rc, model.input_perms[0], 1), skip=skip)
        axes = model.output_axes
        for k in range(len(refs)):
            r, m = back.reference[k], back.outputs[k][:, 0]
            if axes[k].length is not None:  # a profile: flip it back onto the + strand
                r = np.flip(r, axis=1 + axes[k].length)
                m = np.flip(m, axis=2 + axes[k].length)
            refs[k] = (refs[k] + r) / 2
            muts[k] = (muts[k] + m) / 2
    return refs, muts


def score_variants(
    model: Model | Ensemble | list[Model],
    vcf: str | os.PathLike | list[Variant],
    genome: str | os.PathLike | Genome,
    *,
    reduce: str = "delta",
    outputs: Any = None,
    tasks: Any = None,
    sum_over: Any = None,
    over: Any = None,
    around: int | None = None,
    length: int | None = None,
    rc: bool = False,
    backend: str = "auto",
    batch_size: int | None = None,
    memory_budget: int | str | None = None,
    threads: int | None = None,
    windows_per_batch: int = 64,
    client: Any = None,
    progress: Any = None,
) -> VariantScores:
    """Score the SNVs of ``vcf`` with ``model`` in windows of ``genome``.

    ``model``: a model, or an ensemble (a list of models, or an
    :class:`~ismkernel.ensemble.Ensemble`) whose outputs are averaged before
    the reducer. ``reduce``: ``raw``, ``delta``, ``log2fc``, or a profile
    reducer (``max``, ``min``, ``spliceai``; see
    :meth:`ismkernel.IsmResult.reduce`) over rows ``over`` or within
    ``around`` rows of the variant. ``length``: the window, for a model
    whose input length is free (SpliceAI's package scores a 10,101-long
    window for ``-D 50``). ``client``: a ``dask.distributed.Client``;
    windows go to its workers in batches and come back in order.
    ``progress``: called with the number of variants finished since its
    last call.
    """
    reduce = reducer_name(reduce, REDUCERS + PROFILE_REDUCERS)
    if reduce not in VARIANT_REDUCERS:
        raise InputError(
            f"reduce={reduce!r} for variants: use one of {VARIANT_REDUCERS} (one "
            "alternative per variant leaves nothing to centre or norm over)"
        )
    check_profile_options(reduce, sum_over, over, around)
    span = profile_range(reduce, over, around) if reduce in PROFILE_REDUCERS else None
    memory_budget = check_memory_budget(memory_budget, "memory_budget")
    model = as_model(model)
    specs = model.inputs
    if len(specs) != 1 or 4 not in specs[0].shape or len(specs[0].shape) != 2:
        raise InputError(
            "variant scoring needs a model with one (seq_len, 4) input; this one "
            f"takes {[s.shape for s in specs]}"
        )
    fixed = [d for d in specs[0].shape if d != 4] or [4]
    if length is None:
        if fixed[0] is None:
            raise InputError(
                "the model's input length is free: give the window's length= (for "
                "SpliceAI's ±50-row delta scores, 10101)"
            )
        length = int(fixed[0])
    elif isinstance(length, bool) or not isinstance(length, int | np.integer):
        raise InputError(f"length must be a positive integer, got {length!r}")
    elif fixed[0] is not None and int(length) != fixed[0]:
        raise InputError(
            f"length={length} but the model takes windows of {fixed[0]}; leave "
            "length out"
        )
    length = int(length)
    if length < 1:
        raise InputError(f"length must be a positive integer, got {length}")
    model = fix_length(model, length)
    variants = vcf if isinstance(vcf, list) else read_vcf(vcf)
    genome = genome if isinstance(genome, Genome) else Genome(genome)
    center = length // 2

    status, reason, starts = [], [], []
    for v in variants:
        start, why = _check(v, genome, length)
        status.append("skipped" if why else "scored")
        reason.append(why)
        starts.append(start)

    # One window per distinct (contig, position): alleles share it.
    keys: dict[tuple[str, int], int] = {}
    for v, st in zip(variants, status):
        if st == "scored":
            keys.setdefault((v.chrom, v.pos), len(keys))
    window_keys = list(keys)

    # The alternative bases each window's variants ask for: only those are
    # computed.
    wanted = np.zeros((len(window_keys), 4), dtype=bool)
    for v, st in zip(variants, status):
        if st == "scored":
            wanted[keys[(v.chrom, v.pos)], ALPHABET.index(v.alt)] = True

    def batches():
        for i in range(0, len(window_keys), windows_per_batch):
            part = window_keys[i : i + windows_per_batch]
            x = np.stack(
                [
                    encode(genome.fetch(c, p - 1 - center, p - 1 - center + length))
                    for c, p in part
                ]
            )
            yield x, wanted[i : i + windows_per_batch]

    if outputs is not None:
        # Only the kept outputs are computed.
        names = model.output_names
        model = model.select_outputs([names[k] for k in output_indices(names, outputs)])
    picks = list(range(len(model.output_names)))
    window = parse_range(sum_over, "sum_over")
    axes = model.output_axes
    # A profile reducer reads whole outputs, choosing its channels itself.
    sel_tasks, sel_window = (None, None) if span else (tasks, window)
    for k in picks:  # the options fit every output, before any scoring
        probe = np.zeros((1,) + tuple(axes[k].shape), np.float32)
        select_output(probe, axes[k], 1, sel_tasks, sel_window)
        if span is not None:
            reduce_profile_outputs(
                probe[:, None, None], probe, reduce, axes[k], span, [center], length,
                tasks,
            )  # fmt: skip

    how = dict(
        backend=backend,
        batch_size=batch_size,
        memory_budget=memory_budget,
        threads=threads,
    )
    token = uuid.uuid4().hex
    args = (center, how, rc, token)
    if client is not None:
        from ismkernel.distributed import map_ordered

        results = map_ordered(client, _score_windows, model, batches(), *args)
    else:
        results = (_score_windows(model, b, *args) for b in batches())

    refs: list[list] = [[] for _ in picks]
    muts: list[list] = [[] for _ in picks]
    try:
        for r, m in results:
            for j, k in enumerate(picks):
                refs[j].append(select_output(r[k], axes[k], 1, sel_tasks, sel_window))
                muts[j].append(select_output(m[k], axes[k], 2, sel_tasks, sel_window))
            if progress is not None:
                progress(len(r[0]))
    finally:
        _RUNS.pop(token, None)

    n = len(variants)
    out_ref, out_alt, out_score = [], [], []
    # (dtype given: a VCF with no records gives empty index arrays)
    win_index = np.array(
        [
            keys.get((v.chrom, v.pos), -1) if s == "scored" else -1
            for v, s in zip(variants, status)
        ],
        dtype=np.int64,
    )
    alt_index = np.array(
        [
            ALPHABET.index(v.alt) if s == "scored" else 0
            for v, s in zip(variants, status)
        ],
        dtype=np.int64,
    )
    ok = win_index >= 0
    for j, k in enumerate(picks):
        shape = select_output(
            np.zeros((1,) + tuple(axes[k].shape), np.float32),
            axes[k],
            1,
            sel_tasks,
            sel_window,
        ).shape[1:]
        r_all = (
            np.concatenate(refs[j]) if refs[j] else np.zeros((0,) + shape, np.float32)
        )
        m_all = (
            np.concatenate(muts[j]) if muts[j] else np.zeros((0, 4) + shape, np.float32)
        )
        ref = np.full((n,) + shape, np.nan, dtype=np.float32)
        alt = np.full((n,) + shape, np.nan, dtype=np.float32)
        ref[ok] = r_all[win_index[ok]]
        alt[ok] = m_all[win_index[ok], alt_index[ok]]
        if span is not None:

            def profile(alt_rows, ref_rows, k=k):  # (variants, *fields)
                return reduce_profile_outputs(
                    alt_rows[:, None, None],
                    ref_rows,
                    reduce,
                    axes[k],
                    span,
                    [center],
                    length,
                    tasks,
                )[:, 0, 0]

            zeros = np.zeros((1,) + shape, np.float32)
            fields = profile(zeros, zeros).shape[1:]
            score = np.full((n,) + fields, np.nan, dtype=np.float32)
            if ok.any():
                score[ok] = profile(alt[ok], ref[ok])
        else:
            score = np.full((n,) + shape, np.nan, dtype=np.float32)
            if ok.any():
                s = reduce_scores(
                    alt[ok][:, None, None], ref[ok], reduce, model.output_names[k]
                )
                score[ok] = s[:, 0, 0]
        out_ref.append(ref)
        out_alt.append(alt)
        out_score.append(score)
    return VariantScores(
        variants=variants,
        status=status,
        reason=reason,
        output_names=[model.output_names[k] for k in picks],
        reference=out_ref,
        alternative=out_alt,
        scores=out_score,
        reduce=reduce,
        rc=rc,
        stats={
            "n_windows": len(window_keys),
            "n_scored": int(ok.sum()),
            "n_skipped": int((~ok).sum()),
        },
    )


def _columns(res: VariantScores) -> list[tuple[str, np.ndarray]]:
    cols = []
    if res.reduce in PROFILE_REDUCERS:
        # the fields alone: whole profiles would be hundreds of columns (the
        # HDF5 output keeps them)
        fields = FIELDS[res.reduce]
        for name, score in zip(res.output_names, res.scores):
            flat = score.reshape(len(score), -1, len(fields))
            width = flat.shape[1]
            for i in range(width):
                suffix = f"[{i}]" if width > 1 else ""
                for f, field_name in enumerate(fields):
                    label = (
                        field_name
                        if res.reduce == "spliceai"
                        else f"{res.reduce}_{field_name}"
                    )
                    cols.append((f"{name}{suffix}_{label}", flat[:, i, f]))
        return cols
    for name, ref, alt, score in zip(
        res.output_names, res.reference, res.alternative, res.scores
    ):
        flat = [a.reshape(len(a), int(np.prod(a.shape[1:]))) for a in (ref, alt, score)]
        width = flat[0].shape[1]
        for i in range(width):
            suffix = f"[{i}]" if width > 1 else ""
            cols.append((f"{name}{suffix}_ref", flat[0][:, i]))
            cols.append((f"{name}{suffix}_alt", flat[1][:, i]))
            cols.append((f"{name}{suffix}_{res.reduce}", flat[2][:, i]))
    return cols


def write_tsv(res: VariantScores, path: str) -> None:
    """One row per variant in VCF order: the VCF's columns, status, reason,
    then reference, alternative and score per output value (for a profile
    reducer, its fields per output and channel: ``NAME_DS_AG``, ...,
    ``NAME[c]_max_value``, ``NAME[c]_max_position``)."""
    cols = _columns(res)
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        header = ["chrom", "pos", "id", "ref", "alt", "status", "reason"] + [
            c for c, _ in cols
        ]
        f.write("\t".join(header) + "\n")
        for i, v in enumerate(res.variants):
            values = ["" if np.isnan(c[i]) else f"{c[i]:.7g}" for _, c in cols]
            f.write(
                "\t".join(
                    [
                        v.chrom,
                        str(v.pos),
                        v.id,
                        v.ref,
                        v.alt,
                        res.status[i],
                        res.reason[i],
                    ]
                    + values
                )
                + "\n"
            )


def write_h5(res: VariantScores, path: str, meta: dict) -> None:
    """The same as HDF5: variant columns as datasets, and per output
    ``reference``, ``alternative`` and ``scores`` arrays."""
    import h5py

    from ismkernel.io.results import create_h5

    text = h5py.string_dtype()
    with atomic_file(path) as tmp, create_h5(tmp) as f:
        f.attrs["format"] = "ismkernel-variants"
        for key, value in meta.items():
            f.attrs[key] = "none" if value is None else value
        v = res.variants
        f["chrom"] = np.array([x.chrom for x in v], dtype=text)
        f["pos"] = np.array([x.pos for x in v], dtype=np.int64)
        f["id"] = np.array([x.id for x in v], dtype=text)
        f["ref"] = np.array([x.ref for x in v], dtype=text)
        f["alt"] = np.array([x.alt for x in v], dtype=text)
        f["status"] = np.array(res.status, dtype=text)
        f["reason"] = np.array(res.reason, dtype=text)
        g = f.create_group("outputs")
        for name, ref, alt, score in zip(
            res.output_names, res.reference, res.alternative, res.scores
        ):
            h = g.create_group(name.replace("/", "|"))
            h.attrs["name"] = name
            h["reference"] = ref
            h["alternative"] = alt
            h["scores"] = score
        f.flush()
