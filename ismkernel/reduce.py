"""Scores from ISM outputs: output selection and the reducers.

Every function takes arrays of either NumPy or CuPy and computes with the
array's own module, so a GPU backend reduces on the device before anything
is copied to the host. A backend hands each chunk's outputs to a *sink*
(:class:`OutputSink` keeps them; :class:`ScoreSink` reduces them as they
come, so nothing of the full ``(n_seqs, n_positions, n_alts, *out)`` size
exists when only scores are wanted).

Given ``mutant`` outputs of shape ``(n_seqs, n_positions, n_alts, *out)`` and
``reference`` outputs ``(n_seqs, *out)``, with ``delta = mutant - reference``:

``raw``
    ``mutant``.
``delta``
    ``delta``.
``log2fc``
    ``log2(mutant) - log2(reference)``; outputs must be positive.
``mean-centred``
    ``delta`` minus its mean over the alternatives at each position.
``l2``
    the L2 norm of ``delta`` over the alternatives: ``(n_seqs, n_positions,
    *out)``.

The *profile reducers* take a profile output's change over a range of its
length axis (a :class:`ProfileRange`: fixed rows, rows around each mutated
position, or all) and keep, with every value, the row where it occurs; their
results end in an axis of named fields, :data:`FIELDS` ``[kind]``:

``max``, ``min``
    per channel, the largest (smallest) ``delta`` over the range and its
    position: ``(n_seqs, n_positions, n_alts, *channels, 2)``.
``spliceai``
    SpliceAI's delta scores, as its package computes them from the change
    of the acceptor and donor channels: acceptor gain ``DS_AG`` (the largest
    rise of the acceptor channel), acceptor loss ``DS_AL`` (the largest
    fall, as a positive number), donor gain and loss, then their positions
    ``DP_AG``, ``DP_AL``, ``DP_DG``, ``DP_DL``: ``(n_seqs, n_positions,
    n_alts, 8)``. The package's gene annotation (strand, padding outside
    the transcript, masking of annotated sites) is not applied.

Ties go to the first row (NumPy's ``argmax``, as SpliceAI's package has
it). Positions are stored in the scores' float dtype (exact below 2**24);
an empty range gives NaN value and position, and a NaN change in the range
gives NaN.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ismkernel.errors import InputError

__all__ = [
    "REDUCERS",
    "PROFILE_REDUCERS",
    "reducer_name",
    "FIELDS",
    "SPLICEAI_CHANNELS",
    "SPLICEAI_DISTANCE",
    "OutputAxes",
    "OutputSink",
    "ProfileRange",
    "ScoreSink",
    "check_profile_options",
    "named_fields",
    "profile_range",
    "reduce_profile_outputs",
    "reduce_profile",
    "reduce_scores",
    "select_output",
    "parse_range",
    "window_extreme",
]

REDUCERS = ("raw", "delta", "log2fc", "mean-centred", "l2")

#: Reducers of a profile's change over a range of its length, each value
#: with the row where it occurs (see the module's notes).
PROFILE_REDUCERS = ("max", "min", "spliceai")

#: Names of the last axis of a profile reducer's result.
FIELDS = {
    "max": ("value", "position"),
    "min": ("value", "position"),
    "spliceai": (
        "DS_AG",
        "DS_AL",
        "DS_DG",
        "DS_DL",
        "DP_AG",
        "DP_AL",
        "DP_DG",
        "DP_DL",
    ),
}

#: SpliceAI's acceptor and donor channels (channel 0 is "neither").
SPLICEAI_CHANNELS = (1, 2)
#: SpliceAI's default distance (its ``-D 50``): delta scores look this many
#: rows either side of the variant.
SPLICEAI_DISTANCE = 50


def _xp(a):
    """The array module of ``a`` (CuPy's is imported already if ``a`` is one)."""
    if type(a).__module__.startswith("cupy"):
        import sys

        return sys.modules["cupy"]
    return np


@dataclass(frozen=True)
class OutputAxes:
    """Which per-sample axes of an output (in the model's layout) hold the
    length and the channels (tasks); ``None`` where it has none."""

    name: str
    shape: tuple
    length: int | None
    channels: int | None


def parse_range(text: str | tuple | slice | None, what: str) -> tuple[int, int] | None:
    """``"START:END"`` (either side may be empty only for END) as a pair."""
    if text is None:
        return None
    if isinstance(text, slice):
        return (text.start or 0, text.stop)
    if isinstance(text, tuple):
        start, end = text
    else:
        parts = str(text).split(":")
        if len(parts) != 2:
            raise InputError(f"{what} must be START:END, got {text!r}")
        try:
            start = int(parts[0]) if parts[0] else 0
            end = int(parts[1]) if parts[1] else None
        except ValueError:
            raise InputError(
                f"{what} must be START:END integers, got {text!r}"
            ) from None
    if start < 0 or (end is not None and end <= start):
        raise InputError(f"{what} {text!r} is empty or negative")
    return int(start), None if end is None else int(end)


def select_output(
    array: Any,
    axes: OutputAxes,
    lead: int,
    tasks: Any = None,
    sum_over: tuple[int, int] | None = None,
) -> Any:
    """``array`` (``lead`` leading axes, then the output's) restricted to
    ``tasks`` on its channel axis and summed over ``sum_over`` of its length
    axis."""
    xp = _xp(array)
    channel_axis = axes.channels
    if tasks is not None:
        if channel_axis is None:
            raise InputError(
                f"output '{axes.name}' of shape {axes.shape} has no task axis"
            )
        n = axes.shape[channel_axis]
        idx = np.atleast_1d(np.asarray(tasks))
        if idx.dtype.kind not in "iu" or idx.ndim != 1 or idx.size == 0:
            raise InputError(f"tasks must be a list of channel indices, got {tasks!r}")
        if ((idx < 0) | (idx >= n)).any():
            raise InputError(
                f"tasks {idx.tolist()} out of range for output '{axes.name}' with "
                f"{n} channels (0..{n - 1})"
            )
        array = xp.take(array, xp.asarray(idx), axis=lead + channel_axis)
    if sum_over is not None:
        if axes.length is None:
            raise InputError(
                f"--sum-over needs a profile output with a length axis; output "
                f"'{axes.name}' has shape {axes.shape}"
            )
        n = axes.shape[axes.length]
        start, end = sum_over
        end = n if end is None else end
        if end > n:
            raise InputError(
                f"sum_over {start}:{end} is out of range for output '{axes.name}' of "
                f"length {n}"
            )
        index = [slice(None)] * array.ndim
        index[lead + axes.length] = slice(start, end)
        array = array[tuple(index)].sum(axis=lead + axes.length)
    return array


#: Other spellings users type for a reducer, after lower-casing and ``_`` to ``-``.
_REDUCER_ALIASES = {
    "mean-centered": "mean-centred",
    "maxabs": "max-abs",
    "abs-max": "max-abs",
    "log2-fc": "log2fc",
    "l2-norm": "l2",
}


def reducer_name(kind: Any, choices: tuple[str, ...], argument: str = "reduce") -> str:
    """``kind`` as one of ``choices``, accepting other case, ``_`` for ``-``
    and the spellings in :data:`_REDUCER_ALIASES`; else an error naming
    ``argument``, the choices and the nearest one."""
    if isinstance(kind, str):
        name = kind.strip().lower().replace("_", "-")
        name = _REDUCER_ALIASES.get(name, name)
        if name in choices:
            return name
        close = difflib.get_close_matches(name, choices, n=1)
    else:
        close = []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise InputError(f"{argument} must be one of {choices}, got {kind!r}{hint}")


def reduce_scores(
    mutant: Any, reference: Any, kind: str, name: str = "", overwrite: bool = False
) -> Any:
    """The ``kind`` reducer of ``mutant`` ``(n, P, A, *out)`` against
    ``reference`` ``(n, *out)``. With ``overwrite``, ``mutant`` (a sink's own
    buffer) holds the intermediate results: the same operations in place, so
    the same bits, with no temporary of its size."""
    kind = reducer_name(kind, REDUCERS)
    if kind == "raw":
        return mutant
    xp = _xp(mutant)
    ref = reference[:, None, None]
    out = mutant if overwrite else None
    if kind == "log2fc":
        if bool((mutant <= 0).any()) or bool((reference <= 0).any()):
            raise InputError(
                f"log2fc needs positive outputs, but output '{name}' has values "
                "<= 0; use delta, or an output after softplus or exp"
            )
        return xp.subtract(xp.log2(mutant, out=out), xp.log2(ref), out=out)
    delta = xp.subtract(mutant, ref, out=out)
    if kind == "delta":
        return delta
    if kind == "mean-centred":
        return xp.subtract(delta, delta.mean(axis=2, keepdims=True), out=out)
    return xp.sqrt(xp.multiply(delta, delta, out=out).sum(axis=2))


@dataclass(frozen=True)
class ProfileRange:
    """The rows of a profile's length axis that a profile reducer looks at.

    Parameters
    ----------
    over : (start, end), optional
        Rows ``[start, end)`` of the output (``end`` None: to its end), the
        same for every mutant; positions are reported as rows of the output.
    around : int, optional
        The ``2 * around + 1`` rows centred on the row aligned with the
        mutated position, clipped to the output; positions are reported as
        offsets from that row (negative upstream), as SpliceAI reports its
        delta positions. The output is taken to be centred on the input, one
        row per position: row ``r`` is input position ``r + (seq_len -
        out_len) // 2`` (a central crop as SpliceAI's or BPNet's, or
        ``same`` convolutions).

    With neither, every row, reported as rows.
    """

    over: tuple[int, int | None] | None = None
    around: int | None = None

    def __post_init__(self):
        if self.over is not None and self.around is not None:
            raise InputError(
                "give a profile reducer either over= (fixed rows) or around= (rows "
                "around each mutated position), not both"
            )
        if self.around is not None and (
            isinstance(self.around, bool)
            or not isinstance(self.around, int | np.integer)
            or self.around < 0
        ):
            raise InputError(
                f"around must be a number of rows >= 0, got {self.around!r}"
            )

    @classmethod
    def of(
        cls, over: Any = None, around: Any = None, what: str = "over"
    ) -> ProfileRange:
        """A range from ``over`` (``"START:END"``, a pair or a slice) and
        ``around`` (an integer, or its text)."""
        if isinstance(around, str):
            try:
                around = int(around)
            except ValueError:
                raise InputError(
                    f"around must be a number of rows, got {around!r}"
                ) from None
        return cls(parse_range(over, what), around)

    def rows(
        self, positions: Any, seq_len: int, out_len: int, name: str = ""
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per mutated position (``positions``, input rows), the output rows
        ``[start, end)`` looked at and the row positions are reported from:
        three int64 arrays of shape ``(n_positions,)``."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        n = len(pos)
        if self.around is not None:
            if out_len > seq_len:
                raise InputError(
                    f"around= aligns output rows with input positions, but output "
                    f"'{name}' has {out_len} rows for an input of {seq_len}; give "
                    "over=START:END instead"
                )
            centre = pos - (seq_len - out_len) // 2
            start = np.clip(centre - self.around, 0, out_len)
            end = np.clip(centre + self.around + 1, 0, out_len)
            return start, np.maximum(end, start), centre
        start, end = self.over if self.over is not None else (0, None)
        end = out_len if end is None else end
        if end > out_len:
            raise InputError(
                f"over {start}:{end} is out of range for output '{name}' of length "
                f"{out_len}"
            )
        full = np.full(n, start, dtype=np.int64)
        return full, np.full(n, end, dtype=np.int64), np.zeros(n, dtype=np.int64)

    def hull(
        self, positions: Any, seq_len: int, out_len: int, name: str = ""
    ) -> tuple[int, int]:
        """The rows any mutant looks at, as one range (``(0, 0)`` if none):
        what the planner must compute of the output."""
        start, end, _ = self.rows(positions, seq_len, out_len, name)
        keep = end > start
        if not keep.any():
            return (0, 0)
        return int(start[keep].min()), int(end[keep].max())


def window_extreme(
    values: Any, axis: int, start: Any, end: Any, largest: bool = True
) -> tuple[Any, Any]:
    """Per leading index ``i``, the largest (or smallest) of ``values[i]``
    over rows ``[start[i], end[i])`` of axis ``axis``, and its row.

    Parameters
    ----------
    values : ndarray of float, shape (m, ...)
    axis : int
        The length axis of ``values`` (at least 1).
    start, end : ndarray of int64, shape (m,)
    largest : bool
        The maximum (True) or the minimum.

    Returns
    -------
    value : ndarray, shape of ``values`` without ``axis``
        NaN where the range is empty or holds a NaN.
    row : ndarray of int64, same shape
        The first row holding it (-1 where the range is empty).
    """
    xp = _xp(values)
    m, length = values.shape[0], values.shape[axis]
    start = xp.asarray(start, dtype=np.int64).reshape(m)
    end = xp.asarray(end, dtype=np.int64).reshape(m)
    rows = xp.arange(length, dtype=np.int64)
    inside = (rows[None, :] >= start[:, None]) & (rows[None, :] < end[:, None])
    shape = [1] * values.ndim
    shape[0], shape[axis] = m, length
    fill = -np.inf if largest else np.inf
    masked = xp.where(inside.reshape(shape), values, values.dtype.type(fill))
    row = masked.argmax(axis=axis) if largest else masked.argmin(axis=axis)
    value = xp.take_along_axis(masked, xp.expand_dims(row, axis), axis=axis)
    value = xp.squeeze(value, axis=axis)
    empty = (end <= start).reshape((m,) + (1,) * (value.ndim - 1))
    value = xp.where(empty, values.dtype.type(np.nan), value)
    row = xp.where(empty, -1, row)
    return value, row


def _position(row: Any, origin: Any, dtype) -> Any:
    """``row - origin`` in ``dtype``, NaN where ``row`` is -1 (no row)."""
    xp = _xp(row)
    origin = origin.reshape(origin.shape + (1,) * (row.ndim - origin.ndim))
    return xp.where(row < 0, np.nan, row - origin).astype(dtype)


def reduce_profile(
    delta: Any,
    kind: str,
    axes: OutputAxes,
    start: Any,
    end: Any,
    origin: Any,
    *,
    tasks: Any = None,
    lead: int = 3,
) -> Any:
    """The profile reducer ``kind`` of a change ``delta``.

    Parameters
    ----------
    delta : ndarray of float, shape (*lead_shape, *out)
        Mutant minus reference of one output, in the model's layout, with
        ``lead`` leading axes: ``(n_seqs, n_positions, n_alts, *out)`` for an
        ISM result, ``(n_mutants, *out)`` for a chunk.
    kind : {"max", "min", "spliceai"}
    axes : OutputAxes
        The output's axes (it must have a length axis).
    start, end, origin : ndarray of int64, broadcastable to ``lead_shape``
        Per mutant, the output rows ``[start, end)`` to look at and the row
        positions are reported from (:meth:`ProfileRange.rows`).
    tasks : list of int, optional
        ``max``/``min``: the channels kept (default all). ``spliceai``: the
        acceptor and donor channels (default :data:`SPLICEAI_CHANNELS`).

    Returns
    -------
    ndarray, shape (*lead_shape, *channels, 2) or (*lead_shape, 8)
        The fields :data:`FIELDS` ``[kind]`` along the last axis.
    """
    kind = reducer_name(kind, PROFILE_REDUCERS)
    if axes.length is None:
        raise InputError(
            f"reduce={kind!r} needs a profile output with a length axis; output "
            f"'{axes.name}' has shape {axes.shape}"
        )
    xp = _xp(delta)
    if kind == "spliceai":
        channels = SPLICEAI_CHANNELS if tasks is None else tasks
        idx = np.atleast_1d(np.asarray(channels))
        if idx.ndim != 1 or idx.size != 2:
            raise InputError(
                "reduce='spliceai' takes tasks=[acceptor, donor], two channel "
                f"indices (default {list(SPLICEAI_CHANNELS)}), got {channels!r}"
            )
        delta = select_output(delta, axes, lead, idx)
    elif tasks is not None:
        delta = select_output(delta, axes, lead, tasks)
    head = delta.shape[:lead]
    m = int(np.prod(head))
    flat = delta.reshape((m,) + delta.shape[lead:])
    axis = 1 + axes.length

    def per_mutant(a):
        return xp.broadcast_to(xp.asarray(a, dtype=np.int64), head).reshape(m)

    s, e, o = per_mutant(start), per_mutant(end), per_mutant(origin)
    if kind == "spliceai":
        # the channel axis of a per-mutant result (the length axis is gone)
        ch = 1 + axes.channels - (1 if axes.channels > axes.length else 0)
        gain, gain_row = window_extreme(flat, axis, s, e, largest=True)
        fall, fall_row = window_extreme(flat, axis, s, e, largest=False)
        # SpliceAI takes the loss as max(ref - alt): the same number and row
        # as 0 - min(alt - ref), since negation is exact (and 0 - 0 is +0, as
        # ref - alt is where nothing changed).
        fields = []
        for pick in (0, 1):
            fields += [
                xp.take(gain, pick, axis=ch),
                0 - xp.take(fall, pick, axis=ch),
            ]
        for pick in (0, 1):
            fields += [
                _position(xp.take(gain_row, pick, axis=ch), o, flat.dtype),
                _position(xp.take(fall_row, pick, axis=ch), o, flat.dtype),
            ]
        out = xp.stack(fields, axis=-1)
    else:
        value, row = window_extreme(flat, axis, s, e, largest=kind == "max")
        out = xp.stack([value, _position(row, o, flat.dtype)], axis=-1)
    return out.reshape(head + out.shape[1:])


def named_fields(kind: str, scores: Any) -> dict[str, Any]:
    """A profile reducer's result as a dict of its fields by name."""
    names = FIELDS[kind]
    if scores.shape[-1] != len(names):
        raise InputError(
            f"scores of shape {scores.shape} do not end in the {len(names)} fields "
            f"of reduce={kind!r}"
        )
    return {name: scores[..., i] for i, name in enumerate(names)}


def check_profile_options(
    kind: str | None, sum_over: Any = None, over: Any = None, around: Any = None
) -> None:
    """Refuse options the reducer ``kind`` cannot take: ``sum_over`` with a
    profile reducer, ``over``/``around`` with any other."""
    if kind in PROFILE_REDUCERS:
        if sum_over is not None:
            raise InputError(
                f"reduce={kind!r} looks along the profile's length, which sum_over "
                "would sum away; give its rows as over=START:END (or around=N) "
                "instead"
            )
    elif over is not None or around is not None:
        raise InputError(
            f"over= and around= choose the rows of the {', '.join(PROFILE_REDUCERS)} "
            f"reducers; reduce={kind!r} takes sum_over= instead"
        )


def profile_range(kind: str, over: Any = None, around: Any = None) -> ProfileRange:
    """The rows the profile reducer ``kind`` looks at: ``over``, ``around``,
    or by default all rows (``spliceai``: :data:`SPLICEAI_DISTANCE` rows
    either side, as its package)."""
    if kind == "spliceai" and over is None and around is None:
        around = SPLICEAI_DISTANCE
    return ProfileRange.of(over, around)


def reduce_profile_outputs(
    mutant: Any,
    reference: Any,
    kind: str,
    axes: OutputAxes,
    span: ProfileRange,
    positions: Any,
    seq_len: int,
    tasks: Any = None,
) -> Any:
    """The profile reducer ``kind`` of mutants ``(n_seqs, n_positions,
    n_alts, *out)`` against ``reference`` ``(n_seqs, *out)`` (model layout),
    mutated at input rows ``positions`` of sequences of ``seq_len``."""
    if axes.length is None:
        raise InputError(
            f"reduce={kind!r} needs a profile output with a length axis; output "
            f"'{axes.name}' has shape {axes.shape}"
        )
    out_len = mutant.shape[3 + axes.length]
    start, end, origin = span.rows(positions, seq_len, out_len, axes.name)
    at = (None, slice(None), None)
    delta = mutant - reference[:, None, None]
    return reduce_profile(
        delta, kind, axes, start[at], end[at], origin[at], tasks=tasks, lead=3
    )


class OutputSink:
    """Keeps every mutant's outputs as the backend writes them.

    After a run, ``outputs[k]`` is ``(n_seqs, n_positions, n_alts, *out)``
    and ``reference[k]`` is ``(n_seqs, *out)``, in the IR layout, on the
    backend's array module.

    Parameters
    ----------
    rows : dict of int to (start, end), optional
        Rows of output ``k``'s length axis that are computed; the mutants'
        other rows are set to NaN (never stale values).
    """

    def __init__(self, rows: dict[int, tuple[int, int]] | None = None):
        self.rows = dict(rows or {})
        self.outputs: list = []
        self.reference: list = []

    def open(self, *, n_seqs, n_positions, n_alts, shapes, dtype, xp) -> None:
        self.outputs = [
            xp.empty((n_seqs, n_positions, n_alts) + tuple(s), dtype=dtype)
            for s in shapes
        ]
        self.reference = [xp.empty((n_seqs,) + tuple(s), dtype=dtype) for s in shapes]

    def begin_block(self, b0: int, b1: int, refs: list, same: np.ndarray) -> None:
        """The references of sequences ``[b0, b1)``; mutants whose row already
        equals the alternative (``same``, ``(b1 - b0, n_positions, n_alts)``)
        get them."""
        u_s, u_p, u_a = np.nonzero(same)
        for k, r in enumerate(refs):
            self.reference[k][b0:b1] = r
            self.outputs[k][b0 + u_s, u_p, u_a] = r[u_s]

    def write(self, k: int, seq, pos, alt, values) -> None:
        """Output ``k`` of mutants ``(seq, pos, alt)`` (absolute indices)."""
        self.outputs[k][seq, pos, alt] = values

    def end_block(self, b0: int, b1: int) -> None:
        for k, (start, end) in self.rows.items():
            self.outputs[k][b0:b1, :, :, :start] = np.nan
            self.outputs[k][b0:b1, :, :, end:] = np.nan


class ScoreSink:
    """Reduces each chunk's outputs where they are: the chosen channels,
    summed over a range of the length, then, once a block of sequences is
    complete, the reducer against the reference.

    After a run, ``scores[k]`` is ``(n_seqs, n_positions, n_alts, *sel)``
    (``l2``: without ``n_alts``) and ``reference[k]`` the selected reference
    ``(n_seqs, *sel)``, both in the model's layout; ``full_reference[k]`` is
    the whole reference output ``(n_seqs, *out)`` in the IR layout. Only a
    block's selected outputs are held while it runs.

    A profile reducer (:data:`PROFILE_REDUCERS`) is applied to each chunk as
    it arrives, against the block's reference, so a block holds only the
    reduced fields; ``reference[k]`` is then the whole reference output in
    the model's layout.

    Parameters
    ----------
    kind : str
        One of :data:`REDUCERS` or :data:`PROFILE_REDUCERS`.
    axes : list of OutputAxes
        Per output, its axes in the model's layout.
    to_model : callable
        ``to_model(k, array, lead)``: output ``k``'s IR-layout ``array`` (with
        ``lead`` leading axes) in the model's layout.
    tasks, sum_over
        As :func:`select_output`.
    rows : dict of int to (start, end), optional
        Computed rows of output ``k`` (IR length axis); others count as NaN.
    picks : list of int, optional
        The outputs scored (default all); the others' ``scores`` are None.
    span : ProfileRange, optional
        A profile reducer's rows (default: all of them).
    positions : ndarray of int, shape (n_positions,), optional
        The mutated positions (input rows); a profile reducer needs them.
    seq_len : int, optional
        The mutated input's length; a profile reducer needs it.
    """

    def __init__(
        self,
        kind: str,
        axes: list[OutputAxes],
        to_model: Callable,
        *,
        tasks: Any = None,
        sum_over: tuple[int, int] | None = None,
        rows: dict[int, tuple[int, int]] | None = None,
        picks: list[int] | None = None,
        span: ProfileRange | None = None,
        positions: Any = None,
        seq_len: int | None = None,
    ):
        kind = reducer_name(kind, REDUCERS + PROFILE_REDUCERS)
        self.kind = kind
        self.profile = kind in PROFILE_REDUCERS
        if self.profile:
            check_profile_options(kind, sum_over)
            if positions is None or seq_len is None:
                raise InputError(
                    f"reduce={kind!r} needs the mutated positions and sequence length"
                )
        self.axes = list(axes)
        self.to_model = to_model
        self.tasks = tasks
        self.sum_over = sum_over
        self.rows = dict(rows or {})
        self.picks = None if picks is None else set(picks)
        self.span = span or ProfileRange()
        self.positions = None if positions is None else np.asarray(positions)
        self.seq_len = seq_len
        self.scores: list = []
        self.reference: list = []
        self._block: list = []
        self._windows: dict[int, tuple] = {}
        self._b0 = 0

    def _select(self, k: int, array, lead: int):
        if self.profile:  # the reducer picks channels and rows itself
            return self.to_model(k, array, lead)
        return select_output(
            self.to_model(k, array, lead), self.axes[k], lead, self.tasks, self.sum_over
        )

    def _reduce(self, k: int, delta, pos):
        """The profile reducer of changes ``delta`` ``(m, *out)`` (model
        layout) of mutants at position indices ``pos`` ``(m,)``."""
        start, end, origin = self._windows[k]
        return reduce_profile(
            delta,
            self.kind,
            self.axes[k],
            start[pos],
            end[pos],
            origin[pos],
            tasks=self.tasks,
            lead=1,
        )

    def open(self, *, n_seqs, n_positions, n_alts, shapes, dtype, xp) -> None:
        self.xp, self.dtype = xp, dtype
        self.n_positions, self.n_alts = n_positions, n_alts
        self.scores, self.reference, self.sel = [], [], []
        self.full_reference = [
            xp.empty((n_seqs,) + tuple(s), dtype=dtype) for s in shapes
        ]
        for k, shape in enumerate(shapes):
            if self.picks is not None and k not in self.picks:
                self.sel.append(None)
                self.scores.append(None)
                self.reference.append(None)
                continue
            probe = self._select(k, np.zeros((1,) + tuple(shape), dtype=dtype), 1)
            sel = tuple(probe.shape[1:])
            self.reference.append(xp.empty((n_seqs,) + sel, dtype=dtype))
            if self.profile:
                axes = self.axes[k]
                if axes.length is None:
                    raise InputError(
                        f"reduce={self.kind!r} needs a profile output with a length "
                        f"axis; output '{axes.name}' has shape {axes.shape}"
                    )
                self._windows[k] = self.span.rows(
                    self.positions, self.seq_len, sel[axes.length], axes.name
                )
                pos0 = np.zeros(1, dtype=np.int64)
                sel = tuple(self._reduce(k, probe, pos0).shape[1:])
            self.sel.append(sel)
            head = (n_seqs, n_positions) + (() if self.kind == "l2" else (n_alts,))
            self.scores.append(xp.empty(head + sel, dtype=dtype))

    def begin_block(self, b0: int, b1: int, refs: list, same: np.ndarray) -> None:
        self._b0 = b0
        u_s, u_p, u_a = np.nonzero(same)
        self._block = []
        for k, r in enumerate(refs):
            self.full_reference[k][b0:b1] = r
            if self.sel[k] is None:
                self._block.append(None)
                continue
            ref = self._select(k, r, 1)
            self.reference[k][b0:b1] = ref
            block = self.xp.empty(
                (b1 - b0, self.n_positions, self.n_alts) + self.sel[k], dtype=self.dtype
            )
            if self.profile:  # a copied reference changes nothing
                zero = self.xp.zeros((len(u_s),) + ref.shape[1:], dtype=self.dtype)
                block[u_s, u_p, u_a] = self._reduce(k, zero, u_p)
            else:
                block[u_s, u_p, u_a] = ref[u_s]
            self._block.append(block)

    def write(self, k: int, seq, pos, alt, values) -> None:
        if self._block[k] is None:
            return
        if k in self.rows:  # rows not computed count as NaN, never stale
            start, end = self.rows[k]
            values = values.copy()
            values[:, :start] = np.nan
            values[:, end:] = np.nan
        if self.profile:
            mine = seq - self._b0
            ref = self.reference[k][self._b0 + mine]
            delta = self._select(k, values, 1) - ref
            self._block[k][mine, pos, alt] = self._reduce(k, delta, pos)
            return
        self._block[k][seq - self._b0, pos, alt] = self._select(k, values, 1)

    def end_block(self, b0: int, b1: int) -> None:
        for k, block in enumerate(self._block):
            if block is None:
                continue
            if self.profile:
                self.scores[k][b0:b1] = block
                continue
            self.scores[k][b0:b1] = reduce_scores(
                block,
                self.reference[k][b0:b1],
                self.kind,
                self.axes[k].name,
                overwrite=True,
            )
        self._block = []
