"""Local perturbations beyond point mutations, exact and incremental: window
scans (occlusion, motif insertion, shuffles), pairwise double mutants and
epistasis maps, and greedy design.

Each is a set of *edits* (:class:`~ismkernel.plan.Edits`) run through the same
planner and walker as :func:`~ismkernel.ism`: a change confined to rows
``[i, i + w)`` reaches only a window of every layer, so an edit costs what
those windows cost, never a full forward pass. Results equal
:meth:`Model.predict` on the edited sequences up to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ismkernel import config
from ismkernel.backends import engine
from ismkernel.errors import InputError
from ismkernel.inputs import (
    check_alternatives,
    check_dtype,
    check_positions,
    check_positive_int,
    output_indices,
    seq_input_index,
)
from ismkernel.ism import EditRun, IsmResult, IsmRun
from ismkernel.model import Model, _from_ir
from ismkernel.plan import Edits
from ismkernel.plan.pairs import independent_pairs
from ismkernel.reduce import REDUCERS, parse_range, reducer_name, select_output

__all__ = [
    "scan",
    "shuffles",
    "pairwise",
    "design",
    "Pairwise",
    "Designer",
    "ScanResult",
    "PairwiseResult",
    "DesignResult",
    "Objective",
    "PAIR_REDUCERS",
]


def _as_rows(value: Any, name: str, dtype: np.dtype) -> np.ndarray:
    """``value`` as a finite float array of ``dtype``, or a clear error."""
    if hasattr(value, "__cuda_array_interface__") and not isinstance(value, np.ndarray):
        value = value.get()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a numeric array, got {value!r}") from None
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
    ):
        raise InputError(f"{name} has dtype {arr.dtype}; expected a numeric array")
    arr = arr.astype(dtype)
    if arr.size and not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


def _check_starts(starts: Any, seq_len: int, width: int, name="starts"):
    """Window starts as int64, each window inside the sequence."""
    last = seq_len - width
    if starts is None:
        return np.arange(last + 1, dtype=np.int64)
    if isinstance(starts, slice):
        starts = np.arange(seq_len)[starts]
    arr = np.asarray(starts)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu":
        raise InputError(
            f"{name} must be a non-empty 1-D array of integers, got {starts!r}"
        )
    bad = arr[(arr < 0) | (arr > last)]
    if bad.size:
        raise InputError(
            f"{name} {bad[:5].tolist()} put a window of {width} rows outside a "
            f"sequence of length {seq_len} (valid starts 0..{last})"
        )
    return arr.astype(np.int64)


# ---------------------------------------------------------------------------
# window scans


@dataclass
class ScanResult(IsmResult):
    """Window scans: ``outputs[k]`` is ``(n_seqs, n_starts, n_patterns,
    *out)``, entry ``[n, s, q]`` the output with ``patterns[q]`` written at
    rows ``[starts[s], starts[s] + width)``; the reducers of
    :class:`~ismkernel.IsmResult` apply (over patterns where it says
    alternatives).

    Attributes
    ----------
    starts : ndarray of int64, shape (n_starts,)
    width : int
    patterns : ndarray
        ``(n_patterns, width, n_channels)``, or per start ``(n_starts,
        n_patterns, width, n_channels)``, or per sequence and start.
    """

    width: int = 0
    patterns: np.ndarray | None = None

    @property
    def starts(self) -> np.ndarray:
        return self.positions


class _ScanRun(EditRun):
    label = "scan"

    def __init__(self, model, patterns, starts, **options):
        super().__init__(model, **options)
        self.patterns_in = patterns
        self.starts_in = starts

    def edits(self, seq: np.ndarray) -> Edits:
        n_seqs, seq_len, n_channels = seq.shape
        pat = _as_rows(self.patterns_in, "patterns", self.dtype)
        if pat.ndim not in (3, 4, 5) or pat.shape[-1] != n_channels:
            raise InputError(
                f"patterns has shape {pat.shape}; expected (n_patterns, width, "
                f"{n_channels}), per start (n_starts, n_patterns, width, "
                f"{n_channels}) or per sequence (n_seqs, n_starts, n_patterns, "
                f"width, {n_channels})"
            )
        width = pat.shape[-2]
        if not 1 <= width <= seq_len or pat.shape[-3] < 1:
            raise InputError(
                f"patterns has shape {pat.shape}: windows of {width} rows do not "
                f"fit sequences of length {seq_len}, or there is no pattern"
            )
        if pat.ndim > 3 and self.starts_in is None:
            n_starts = pat.shape[-4]
            if n_starts != seq_len - width + 1:
                raise InputError(
                    f"patterns gives {n_starts} starts; pass them as starts= (the "
                    f"default, every start, has {seq_len - width + 1})"
                )
        starts = _check_starts(self.starts_in, seq_len, width)
        if pat.ndim > 3 and pat.shape[-4] != len(starts):
            raise InputError(
                f"patterns has {pat.shape[-4]} starts on its axis {pat.ndim - 4}; "
                f"starts has {len(starts)}"
            )
        if pat.ndim == 5 and pat.shape[0] != n_seqs:
            raise InputError(
                f"patterns has {pat.shape[0]} sequences on its first axis; x has "
                f"{n_seqs}"
            )
        offsets = np.broadcast_to(np.arange(width), (len(starts), width))
        self.width, self.patterns = width, pat
        return Edits(starts, np.ascontiguousarray(offsets), pat)


def scan(
    model: Model,
    x: Any,
    patterns: Any,
    *,
    starts: Any = None,
    outputs: Any = None,
    reduce: str | None = None,
    progress: Any = False,
    **ism_options,
) -> ScanResult:
    """Write each pattern over each window of the sequences: occlusion (rows of
    zeros), motif insertion and marginalisation (a motif's one-hot rows;
    several motifs at once), multi-base substitutions, shuffles.

    Parameters
    ----------
    model : Model
    x : ndarray, shape (n_seqs, seq_len, n_channels) (the model's layout)
    patterns : ndarray of float
        ``(n_patterns, width, n_channels)``: rows written at ``[s, s +
        width)`` for each start ``s``; ``(n_starts, n_patterns, width,
        n_channels)`` for patterns that differ per start, ``(n_seqs, n_starts,
        n_patterns, width, n_channels)`` per sequence too (see
        :func:`shuffles`).
    starts : 1-D int array or slice, optional
        Window starts; default every start where the window fits.
    outputs : name, index or list of them, optional
        The outputs wanted (default all); nothing only the others need is
        computed.
    reduce : str, optional
        Also compute ``result.scores`` with this reducer (see :func:`ism`).
    progress : bool or callable
    **ism_options
        ``seq_input``, ``backend``, ``batch_size``, ``dtype``,
        ``memory_budget``, ``threads``, ``output_rows``, ``early_exit``, as
        for :func:`ism`.

    Returns
    -------
    ScanResult
        Where a pattern equals the sequence's rows, the reference is copied.
    """
    if reduce is not None:
        reduce = reducer_name(reduce, REDUCERS)
    run = _ScanRun(_pick(model, x, outputs), patterns, starts, **ism_options)
    res = run(x, progress=progress)
    out = ScanResult(**{f: getattr(res, f) for f in res.__dataclass_fields__})
    out.width, out.patterns = run.width, run.patterns
    if reduce is not None:
        out.scores = out.reduce(reduce)
    return out


def _kmer_shuffle(symbols: np.ndarray, k: int, rng: np.random.Generator):
    """A random permutation of ``symbols`` (1-D ints) with the same counts of
    every ``k``-mer (Altschul and Erikson: an Eulerian walk through the graph
    of (k-1)-mers, its last edges out of each vertex drawn as a random
    arborescence so the walk uses every edge)."""
    n = len(symbols)
    if k <= 1 or n <= k:
        return symbols[rng.permutation(n)] if k <= 1 else symbols.copy()
    m = k - 1
    vertex_of: dict[tuple, int] = {}
    vertices = []
    for i in range(n - m + 1):
        key = tuple(symbols[i : i + m])
        if key not in vertex_of:
            vertex_of[key] = len(vertices)
            vertices.append(key)
    path = [vertex_of[tuple(symbols[i : i + m])] for i in range(n - m + 1)]
    n_v = len(vertices)
    out_edges: list[list[int]] = [[] for _ in range(n_v)]
    for a, b in zip(path[:-1], path[1:]):
        out_edges[a].append(b)
    last = path[-1]
    # A random arborescence towards the last vertex (random walks, Wilson).
    in_tree = [False] * n_v
    in_tree[last] = True
    nxt = [-1] * n_v
    for v in range(n_v):
        u = v
        while not in_tree[u]:
            nxt[u] = out_edges[u][rng.integers(len(out_edges[u]))]
            u = nxt[u]
        u = v
        while not in_tree[u]:
            in_tree[u] = True
            u = nxt[u]
    for v in range(n_v):
        edges = out_edges[v]
        if v != last:
            edges.remove(nxt[v])
            rng.shuffle(edges)
            edges.append(nxt[v])  # the tree edge leaves last
        else:
            rng.shuffle(edges)
    used = [0] * n_v
    walk = [path[0]]
    for _ in range(len(path) - 1):
        v = walk[-1]
        walk.append(out_edges[v][used[v]])
        used[v] += 1
    out = list(vertices[walk[0]])
    out.extend(vertices[v][-1] for v in walk[1:])
    return np.asarray(out, dtype=symbols.dtype)


def shuffles(
    x: Any,
    starts: Any,
    w: int,
    n: int,
    k: int = 2,
    seed: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Per-start shuffles of each sequence's own window, for tile-shuffle
    scans: the window's rows permuted, keeping the counts of every ``k``-mer
    of rows (``k = 2``: dinucleotides).

    Parameters
    ----------
    x : ndarray, shape (seq_len, n_channels) or (n_seqs, seq_len, n_channels)
        Sequences in the IR's channels-last layout (one-hot or not; rows are
        compared exactly).
    starts : 1-D int array, slice or None
        Window starts (None: every start).
    w : int
        Window width.
    n : int
        Shuffles per window.
    k : int
        Length of the row ``k``-mers whose counts are kept (1: a plain
        permutation).
    seed : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray
        ``(n_starts, n, w, n_channels)`` for one sequence, ``(n_seqs,
        n_starts, n, w, n_channels)`` for several: ``scan``'s per-start (or
        per-sequence) patterns.
    """
    arr = np.asarray(x)
    one = arr.ndim == 2
    if one:
        arr = arr[None]
    if arr.ndim != 3 or not arr.size:
        raise InputError(
            f"x has shape {np.shape(x)}; expected (seq_len, n_channels) or "
            "(n_seqs, seq_len, n_channels)"
        )
    w = check_positive_int(w, "w")
    n = check_positive_int(n, "n")
    k = check_positive_int(k, "k")
    if w > arr.shape[1]:
        raise InputError(f"w={w} is longer than the sequences ({arr.shape[1]})")
    starts = _check_starts(starts, arr.shape[1], w)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out = np.empty((arr.shape[0], len(starts), n, w, arr.shape[2]), dtype=arr.dtype)
    for s_i, seq in enumerate(arr):
        rows, symbols = np.unique(seq, axis=0, return_inverse=True)
        symbols = symbols.reshape(-1)
        for j, s in enumerate(starts):
            window = symbols[s : s + w]
            for r in range(n):
                out[s_i, j, r] = rows[_kmer_shuffle(window, k, rng)]
    return out[0] if one else out


# ---------------------------------------------------------------------------
# pairwise double mutants

#: Reducers of a pairwise map, per pair over its alternatives' epistasis.
PAIR_REDUCERS = ("max-abs", "l2")


@dataclass
class PairwiseResult:
    """Double mutants of pairs of positions.

    Attributes
    ----------
    pairs : ndarray of int64, shape (n_pairs, 2)
        Positions ``i < j``.
    alternatives : ndarray, shape (n_alts, n_channels)
    outputs : list of ndarray
        Per output ``(n_seqs, n_pairs, n_alts, n_alts, *out)``: entry ``[n,
        p, a, b]`` has ``alternatives[a]`` at ``pairs[p, 0]`` and
        ``alternatives[b]`` at ``pairs[p, 1]``.
    singles : list of ndarray
        Per output ``(n_seqs, n_pairs, 2, n_alts, *out)``: the single mutants
        at each pair's two positions.
    reference : list of ndarray
        Per output ``(n_seqs, *out)``.
    independent : ndarray of bool, shape (n_pairs,)
        Pairs the plan proves never interact (their changes never meet at an
        op that is not affine): their double mutants are ``f(i) + f(j) -
        f(ref)``, not computed, and their epistasis is exactly zero.
    seq_len : int
        The mutated input's length (the size of :meth:`matrix`).
    tasks, sum_over
        The selection applied to every output (None: whole outputs).
    scores : list of ndarray or None
        Per output, ``reduce``'s per-pair score, ``(n_seqs, n_pairs, *sel)``.
    """

    pairs: np.ndarray
    alternatives: np.ndarray
    outputs: list[np.ndarray]
    singles: list[np.ndarray]
    reference: list[np.ndarray]
    independent: np.ndarray
    seq_len: int
    output_names: list[str] = field(default_factory=list)
    backend: str = ""
    stats: dict = field(default_factory=dict)
    tasks: Any = None
    sum_over: Any = None
    scores: list[np.ndarray] | None = None

    def epistasis(self, k: int = 0) -> np.ndarray:
        """Output ``k``'s ``f(ij) - f(i) - f(j) + f(ref)`` per double mutant,
        ``(n_seqs, n_pairs, n_alts, n_alts, *out)``; exactly zero for
        independent pairs."""
        f_ij, singles, ref = self.outputs[k], self.singles[k], self.reference[k]
        eps = (
            f_ij
            - singles[:, :, 0, :, None]
            - singles[:, :, 1, None, :]
            + ref[:, None, None, None]
        )
        eps[:, self.independent] = 0
        return eps

    def reduce(self, kind: str = "max-abs", k: int = 0) -> np.ndarray:
        """Output ``k``'s epistasis reduced over each pair's alternatives:
        ``max-abs`` (the largest magnitude) or ``l2`` (the L2 norm),
        ``(n_seqs, n_pairs, *out)``."""
        kind = reducer_name(kind, PAIR_REDUCERS)
        eps = self.epistasis(k)
        if kind == "max-abs":
            return np.abs(eps).max(axis=(2, 3))
        return np.sqrt((eps * eps).sum(axis=(2, 3)))

    def matrix(self, k: int = 0, kind: str = "max-abs") -> np.ndarray:
        """``(n_seqs, seq_len, seq_len)`` map of a scalar per-pair score (the
        output reduced to one value per pair: a scalar output, or
        ``tasks``/``sum_over`` chosen so), symmetric, NaN off the pairs."""
        score = self.scores[k] if self.scores is not None else self.reduce(kind, k)
        score = score.reshape(score.shape[0], score.shape[1], -1)
        if score.shape[2] != 1:
            raise InputError(
                f"output {self.output_names[k]!r} has {score.shape[2]} values per "
                "pair; choose one with tasks= (and sum_over= for a profile)"
            )
        n = self.seq_len
        out = np.full((score.shape[0], n, n), np.nan, dtype=score.dtype)
        i, j = self.pairs[:, 0], self.pairs[:, 1]
        out[:, i, j] = score[:, :, 0]
        out[:, j, i] = score[:, :, 0]
        return out


class _PairRun(EditRun):
    label = "pairs"

    def __init__(self, model, pairs, alternatives, **options):
        super().__init__(model, **options)
        self.pairs = pairs
        self.alternatives = alternatives

    def edits(self, seq: np.ndarray) -> Edits:
        alts = self.alternatives
        n_alts = len(alts)
        a, b = np.divmod(np.arange(n_alts * n_alts), n_alts)
        values = np.stack([alts[a], alts[b]], axis=1)  # (A*A, 2, C)
        offsets = np.stack(
            [np.zeros(len(self.pairs), np.int64), self.pairs[:, 1] - self.pairs[:, 0]],
            axis=1,
        )
        return Edits(self.pairs[:, 0].copy(), offsets, values)


def _check_pairs(pairs: Any, seq_len: int) -> np.ndarray:
    arr = np.asarray(pairs)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.dtype.kind not in "iu":
        raise InputError(
            f"pairs must be an (n_pairs, 2) array of integer positions, got shape "
            f"{arr.shape} of {arr.dtype}"
        )
    if arr.size == 0:
        raise InputError("pairs is empty")
    bad = arr[((arr < 0) | (arr >= seq_len)).any(axis=1)]
    if bad.size:
        raise InputError(
            f"pairs {bad[:3].tolist()} are out of range for sequence length "
            f"{seq_len} (valid positions 0..{seq_len - 1})"
        )
    same = arr[arr[:, 0] == arr[:, 1]]
    if same.size:
        raise InputError(f"pairs {same[:3].tolist()} pair a position with itself")
    return np.sort(arr.astype(np.int64), axis=1)


def _pairs_within(positions: np.ndarray, max_distance: int | None) -> np.ndarray:
    """Pairs ``i < j`` of ``positions`` at most ``max_distance`` apart."""
    pos = np.unique(positions)
    if max_distance is None:
        i, j = np.triu_indices(len(pos), k=1)
        return np.stack([pos[i], pos[j]], axis=1)
    out = []
    for d in range(1, max_distance + 1):
        hit = np.isin(pos + d, pos)
        out.append(np.stack([pos[hit], pos[hit] + d], axis=1))
    pairs = np.concatenate(out) if out else np.zeros((0, 2), np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def pairwise(
    model: Model,
    x: Any,
    *,
    positions: Any = None,
    max_distance: int | None = None,
    pairs: Any = None,
    alternatives: Any = None,
    outputs: Any = None,
    reduce: str | None = None,
    tasks: Any = None,
    sum_over: Any = None,
    progress: Any = False,
    **ism_options,
) -> PairwiseResult:
    """Double mutants for every pair of positions within ``max_distance`` (or
    the explicit ``pairs``), every pair of alternatives, and their epistasis.

    A pair's edit changes its two rows; it costs the windows those two
    changes reach (their hull), never a full forward pass. Pairs the plan
    proves never interact are not computed at all (see
    :attr:`PairwiseResult.independent`).

    Parameters
    ----------
    model : Model
    x : ndarray, shape (n_seqs, seq_len, n_channels) (the model's layout)
    positions : None, slice or 1-D int array
        Positions whose pairs are made; default all.
    max_distance : int, optional
        Largest ``j - i``; default every pair.
    pairs : (n_pairs, 2) int array, optional
        Explicit pairs instead (each sorted to ``i < j``).
    alternatives : ndarray, shape (n_alts, n_channels), optional
        Default ``identity(n_channels)``.
    outputs : name, index or list of them, optional
        The outputs wanted (default all); nothing only the others need is
        computed.
    reduce : {"max-abs", "l2"}, optional
        Also ``result.scores``: per pair, the epistasis over the
        alternatives, its largest magnitude or its L2 norm.
    tasks, sum_over
        Keep only these channels of every output, summed over this range of
        a profile's length (as :meth:`IsmResult.reduce`): a chosen task.
    progress : bool or callable
    **ism_options
        As for :func:`ism`.
    """
    if reduce is not None:
        reduce = reducer_name(reduce, PAIR_REDUCERS)
    run = Pairwise(
        model,
        positions=positions,
        max_distance=max_distance,
        pairs=pairs,
        alternatives=alternatives,
        outputs=outputs,
        tasks=tasks,
        sum_over=sum_over,
        **ism_options,
    )
    result = run(x, progress=progress)
    if reduce is not None:
        result.scores = [result.reduce(reduce, k) for k in range(len(result.outputs))]
    return result


class Pairwise:
    """:func:`pairwise` with its arguments fixed, for many batches of
    sequences: the pairs, the single mutants' plan and the pairs' plan are
    made once per sequence length and reused."""

    def __init__(
        self,
        model: Model,
        *,
        positions: Any = None,
        max_distance: int | None = None,
        pairs: Any = None,
        alternatives: Any = None,
        outputs: Any = None,
        tasks: Any = None,
        sum_over: Any = None,
        **ism_options,
    ):
        self.max_distance = check_positive_int(max_distance, "max_distance")
        if pairs is not None and (
            positions is not None or self.max_distance is not None
        ):
            raise InputError("give pairs, or positions and max_distance, not both")
        self.window = parse_range(sum_over, "sum_over")
        self.model, self.outputs = model, outputs
        self.positions, self.pairs, self.alternatives = positions, pairs, alternatives
        self.tasks, self.sum_over = tasks, sum_over
        self.options = dict(ism_options)
        self._ready: dict[tuple, dict] = {}

    def setup(self, x: Any) -> dict:
        """The pairs and both runs for sequences like ``x`` (made once per
        shape)."""
        model = _pick(self.model, x, self.outputs)
        seq, dtype = _sequences(model, x, self.options)
        key = seq.shape[1:]
        if key in self._ready:
            return self._ready[key]
        seq_len = seq.shape[1]
        alts = check_alternatives(self.alternatives, seq.shape[2], dtype)
        if self.pairs is not None:
            pair_arr = _check_pairs(self.pairs, seq_len)
        else:
            pair_arr = _pairs_within(
                check_positions(self.positions, seq_len), self.max_distance
            )
            if not len(pair_arr):
                raise InputError(
                    "no pair of the positions lies within "
                    f"max_distance={self.max_distance}"
                )
        union = np.unique(pair_arr)
        singles = IsmRun(model, positions=union, alternatives=alts, **self.options)
        plan = singles.plan_for(x)[3]
        first = np.searchsorted(union, pair_arr[:, 0])
        second = np.searchsorted(union, pair_arr[:, 1])
        independent = independent_pairs(plan, first, second)
        dependent = np.flatnonzero(~independent)
        doubles = (
            _PairRun(model, pair_arr[dependent], alts, **self.options)
            if len(dependent)
            else None
        )
        self._ready[key] = ready = dict(
            model=model,
            pairs=pair_arr,
            alternatives=alts,
            singles=singles,
            doubles=doubles,
            first=first,
            second=second,
            independent=independent,
            dependent=dependent,
        )
        return ready

    def __call__(self, x: Any, progress: Any = False) -> PairwiseResult:
        r = self.setup(x)
        seq, _ = _sequences(r["model"], x, self.options)
        pair_arr, alts = r["pairs"], r["alternatives"]
        first, second = r["first"], r["second"]
        independent, dependent = r["independent"], r["dependent"]
        tasks, window = self.tasks, self.window
        kept = tasks is None and window is None
        # the single mutants, reduced to the chosen tasks and range as they come
        one = r["singles"](
            x, progress=progress, reduce=None if kept else "raw", tasks=tasks,
            sum_over=self.sum_over, keep_outputs=kept,
        )  # fmt: skip
        if kept:
            single_out, reference = one.outputs, one.reference
        else:
            single_out, reference = one.scores, one.score_reference
        n_seqs, n_alts = seq.shape[0], len(alts)
        doubles = None
        stats = {"singles": one.stats, "n_independent": int(independent.sum())}
        # A double mutant one side of which writes the reference row is that
        # side's single mutant: copied, never computed.
        held_i = np.all(seq[:, pair_arr[:, 0], None, :] == alts, axis=-1)  # (n, P, A)
        held_j = np.all(seq[:, pair_arr[:, 1], None, :] == alts, axis=-1)
        if r["doubles"] is not None:
            skip = held_i[:, dependent, :, None] | held_j[:, dependent, None, :]
            res = r["doubles"](
                x, progress=progress, reduce=None if kept else "raw", tasks=tasks,
                sum_over=self.sum_over, keep_outputs=kept,
                skip=skip.reshape(n_seqs, len(dependent), -1),
            )  # fmt: skip
            doubles = res.outputs if kept else res.scores
            stats["pairs"] = res.stats
        outputs, pair_singles = [], []
        for k, (s_out, ref) in enumerate(zip(single_out, reference)):
            s_i, s_j = s_out[:, first], s_out[:, second]  # (n, pairs, A, *sel)
            f = s_i[:, :, :, None] + s_j[:, :, None, :] - ref[:, None, None, None]
            if doubles is not None:
                f[:, dependent] = doubles[k].reshape(
                    (n_seqs, len(dependent), n_alts, n_alts) + ref.shape[1:]
                )
            n_i, p_i, a_i = np.nonzero(held_i)
            f[n_i, p_i, a_i] = s_j[n_i, p_i]
            n_j, p_j, b_j = np.nonzero(held_j)
            f[n_j, p_j, :, b_j] = s_i[n_j, p_j]
            outputs.append(f)
            pair_singles.append(np.stack([s_i, s_j], axis=2))
        return PairwiseResult(
            pairs=pair_arr,
            alternatives=alts,
            outputs=outputs,
            singles=pair_singles,
            reference=reference,
            independent=independent,
            output_names=one.output_names,
            backend=one.backend,
            stats=stats,
            tasks=tasks,
            sum_over=self.sum_over,
            seq_len=seq.shape[1],
        )


def _pick(model: Model, x: Any, outputs: Any) -> Model:
    """``model`` keeping only ``outputs`` (names or indices; None: all)."""
    if outputs is None:
        return model
    model = model.specialize(x)
    names = model.output_names
    picks = output_indices(names, outputs, "outputs")
    return model.select_outputs([names[i] for i in picks])


def _sequences(model: Model, x: Any, options: dict) -> tuple[np.ndarray, np.dtype]:
    """The mutated input of ``x`` in the IR layout, validated, and the dtype."""
    dtype = check_dtype(options.get("dtype", config.DEFAULT_DTYPE))
    m = model.specialize(x)
    index = seq_input_index(m.graph.input_specs, options.get("seq_input"))
    return m.feeds(x, dtype)[index], dtype


# ---------------------------------------------------------------------------
# greedy and beam design

_GOALS = {
    "max": 1,
    "maximise": 1,
    "maximize": 1,
    "min": -1,
    "minimise": -1,
    "minimize": -1,
}


@dataclass(frozen=True)
class Objective:
    """What :func:`design` maximises or minimises: output ``output`` (name or
    index), its channels ``tasks``, summed over ``sum_over`` of its length,
    then summed to one number per sequence.

    ``Objective.parse`` also takes ``"max"``/``"min"`` (the first output,
    everything summed) or a dict of these fields.
    """

    output: str | int = 0
    tasks: Any = None
    sum_over: Any = None
    goal: str = "max"

    @classmethod
    def parse(cls, spec: Any) -> Objective:
        if isinstance(spec, Objective):
            obj = spec
        elif isinstance(spec, str):
            obj = cls(goal=spec)
        elif isinstance(spec, dict):
            unknown = set(spec) - {"output", "tasks", "sum_over", "goal"}
            if unknown:
                raise InputError(
                    f"objective has unknown keys {sorted(unknown)}; it takes output, "
                    "tasks, sum_over and goal"
                )
            obj = cls(**spec)
        else:
            raise InputError(
                f"objective must be 'max', 'min', a dict (output, tasks, sum_over, "
                f"goal) or an Objective, got {spec!r}"
            )
        if obj.goal not in _GOALS:
            raise InputError(f"objective goal must be 'max' or 'min', got {obj.goal!r}")
        return obj

    @property
    def sign(self) -> int:
        return _GOALS[self.goal]


@dataclass
class DesignResult:
    """A design's trajectory, per input sequence (its best final sequence's
    lineage, for a beam).

    Attributes
    ----------
    sequences : ndarray
        The designed sequences, in the model's layout (as ``x``).
    edits : ndarray of int64, shape (n_seqs, rounds, 2)
        Per round, the position edited and the index of the alternative
        written (``-1`` once the design stopped, see ``tol``).
    objective : ndarray of float64, shape (n_seqs, rounds + 1)
        The objective before any edit, then after each round (NaN once
        stopped).
    alternatives : ndarray, shape (n_alts, n_channels)
    positions : ndarray of int64
        The positions that could be edited.
    beam : ndarray
        Every final beam member, ``(n_seqs, beam, ...)`` in the model's
        layout, best first (fewer members are repeated where a beam ran out
        of distinct edits).
    """

    sequences: np.ndarray
    edits: np.ndarray
    objective: np.ndarray
    alternatives: np.ndarray
    positions: np.ndarray
    beam: np.ndarray
    output_name: str = ""
    backend: str = ""
    stats: dict = field(default_factory=dict)


def design(
    model: Model,
    x: Any,
    objective: Any,
    *,
    rounds: int,
    positions: Any = None,
    alternatives: Any = None,
    beam: int = 1,
    tol: float | None = None,
    progress: Any = False,
    **ism_options,
) -> DesignResult:
    """Greedy (``beam=1``) or beam design by point mutations.

    Each round is an incremental ISM of the current sequences; the best edits
    (by ``objective``; ties to the first position, then alternative) are
    committed. Committing updates the reference activations only inside
    that edit's windows, from the mutant's own values: no full forward pass.

    Parameters
    ----------
    model : Model
    x : ndarray, shape (n_seqs, seq_len, n_channels) (the model's layout)
        Each sequence is designed on its own.
    objective : Objective, dict or str
        ``"max"``/``"min"``, or ``{"output": ..., "tasks": ..., "sum_over":
        ..., "goal": "max"|"min"}`` (see :class:`Objective`).
    rounds : int
        Edits made (at most).
    positions : None, slice or 1-D int array
        Positions that may be edited; default all.
    alternatives : ndarray, shape (n_alts, n_channels), optional
        Rows that may be written; default ``identity(n_channels)``. An edit
        that writes what the sequence holds is not an edit.
    beam : int
        Sequences kept per input sequence each round.
    tol : float, optional
        Stop a sequence once the best edit improves its objective by at most
        ``tol`` (default: always make ``rounds`` edits).
    progress : bool or callable
    **ism_options
        As for :func:`ism`.
    """
    designer = Designer(
        model,
        objective,
        rounds=rounds,
        positions=positions,
        alternatives=alternatives,
        beam=beam,
        tol=tol,
        **ism_options,
    )
    return designer(x, progress=progress)


class Designer:
    """:func:`design` with its arguments fixed, for many batches of
    sequences: the plan (of the objective's output only) is made once per
    sequence length and reused."""

    def __init__(
        self,
        model: Model,
        objective: Any,
        *,
        rounds: int,
        positions: Any = None,
        alternatives: Any = None,
        beam: int = 1,
        tol: float | None = None,
        **ism_options,
    ):
        self.objective = Objective.parse(objective)
        self.rounds = check_positive_int(rounds, "rounds")
        self.beam = check_positive_int(beam, "beam")
        if tol is not None and (
            isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0
        ):
            raise InputError(f"tol must be a non-negative number or None, got {tol!r}")
        self.tol = tol
        self.model = model
        self.positions, self.alternatives = positions, alternatives
        self.options = ism_options
        self._runs: dict = {}

    def run_for(self, x: Any):
        """The ISM run of the objective's output for sequences like ``x``."""
        obj = self.objective
        full = self.model.specialize(x)
        (k,) = output_indices(full.output_names, obj.output, "objective output")
        key = id(full)
        if key not in self._runs:
            model = _pick(full, x, [k])  # only the objective's output is computed
            axes = model.output_axes[0]
            window = parse_range(obj.sum_over, "objective sum_over")
            select_output(
                np.zeros((1,) + tuple(axes.shape)), axes, 1, obj.tasks, window
            )
            self._runs[key] = IsmRun(
                model,
                positions=self.positions,
                alternatives=self.alternatives,
                **self.options,
            )
        return self._runs[key]

    def __call__(self, x: Any, progress: Any = False) -> DesignResult:
        obj, rounds, beam, tol = self.objective, self.rounds, self.beam, self.tol
        run = self.run_for(x)
        k = 0
        mdl, feeds, index, plan, rows = run.plan_for(x)
        names = mdl.output_names
        edits, sign = plan.edits, obj.sign
        n_seqs = feeds[index].shape[0]
        n_pos, n_alts = edits.n_sites, edits.n_variants
        incremental = run.backend_name != "reference"
        backend = run.backend
        feeds = [np.array(f, copy=True) for f in feeds]
        member_of = np.arange(n_seqs)
        history: list[list[tuple[int, int]]] = [[] for _ in range(n_seqs)]
        values: list[list[float]] = [[] for _ in range(n_seqs)]
        stopped = np.zeros(n_seqs, dtype=bool)
        state = engine.reference_state(backend, plan, feeds) if incremental else None
        stats: dict = {"rounds": []}
        for _ in range(rounds):
            sink = run.score_sink(mdl, rows, "raw", obj.tasks, obj.sum_over, picks=[k])
            stats["rounds"].append(run.run_plan(plan, feeds, sink, progress, state))
            n_m = len(member_of)
            score = sign * np.asarray(
                sink.scores[k].reshape(n_m, n_pos, n_alts, -1).sum(axis=-1),
                dtype=np.float64,
            )
            current = np.asarray(sink.reference[k].reshape(n_m, -1).sum(axis=-1))
            for m in range(n_m):
                if not values[m]:
                    values[m].append(float(current[m]))
            score[edits.unchanged(feeds[index])] = -np.inf
            parents, sites, variants, new_of, new_hist, new_vals = (
                [],
                [],
                [],
                [],
                [],
                [],
            )
            for s in range(n_seqs):
                members = np.flatnonzero(member_of == s)
                cand = score[members].reshape(-1)
                order = np.argsort(-cand, kind="stable")
                best_now = max(sign * current[m] for m in members)
                top = cand[order[0]] if len(order) else -np.inf
                if (
                    stopped[s]
                    or not np.isfinite(top)
                    or (tol is not None and top - best_now <= tol)
                ):
                    stopped[s] = True
                    for m in members:
                        parents.append(m)
                        sites.append(-1)
                        variants.append(-1)
                        new_of.append(s)
                        new_hist.append(history[m])
                        new_vals.append(values[m])
                    continue
                seen: set[bytes] = set()
                for o in order:
                    if len(seen) == beam or not np.isfinite(cand[o]):
                        break
                    mi, rest = divmod(int(o), n_pos * n_alts)
                    pi, ai = divmod(rest, n_alts)
                    parent = members[mi]
                    edited = feeds[index][parent].copy()
                    rows_i = edits.starts[pi] + edits.offsets[pi]
                    edited[rows_i] = edits.rows(np.array([parent]), pi, ai)
                    key = edited.tobytes()
                    if key in seen:
                        continue
                    seen.add(key)
                    parents.append(parent)
                    sites.append(pi)
                    variants.append(ai)
                    new_of.append(s)
                    new_hist.append(history[parent] + [(int(edits.starts[pi]), ai)])
                    new_vals.append(values[parent] + [float(sign * cand[o])])
            parents = np.asarray(parents, dtype=np.int64)
            sites = np.asarray(sites, dtype=np.int64)
            variants = np.asarray(variants, dtype=np.int64)
            if incremental:
                state = engine.commit(
                    backend, plan, feeds, state, parents, sites, variants
                )
            feeds = [f[parents] for f in feeds]
            for i in np.flatnonzero(sites >= 0):
                rows_i = edits.starts[sites[i]] + edits.offsets[sites[i]]
                feeds[index][i, rows_i] = edits.rows(
                    np.array([parents[i]]), sites[i], variants[i]
                )
            member_of = np.asarray(new_of)
            history, values = new_hist, new_vals
            if stopped.all():
                break

        out_edits = np.full((n_seqs, rounds, 2), -1, dtype=np.int64)
        out_obj = np.full((n_seqs, rounds + 1), np.nan)
        best, members_by_seq = [], []
        for s in range(n_seqs):
            members = np.flatnonzero(member_of == s)
            ranked = sorted(members, key=lambda m: -sign * values[m][-1])
            best.append(ranked[0])
            members_by_seq.append(ranked + [ranked[-1]] * (beam - len(ranked)))
            m = ranked[0]
            for r, (pos, alt) in enumerate(history[m]):
                out_edits[s, r] = (pos, alt)
            out_obj[s, : len(values[m])] = values[m]
        perm = mdl.input_perms[index]
        seqs = feeds[index]
        return DesignResult(
            sequences=_from_ir(seqs[np.asarray(best)], perm, 1),
            edits=out_edits,
            objective=out_obj,
            alternatives=edits.variant_rows(),
            positions=edits.starts,
            beam=_from_ir(
                seqs[np.asarray(members_by_seq).reshape(-1)], perm, 1
            ).reshape((n_seqs, beam) + tuple(_from_ir(seqs[:1], perm, 1).shape[1:])),
            output_name=names[k],
            backend=run.backend_name,
            stats=stats,
        )
