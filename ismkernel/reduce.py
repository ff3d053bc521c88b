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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ismkernel.errors import InputError

__all__ = [
    "REDUCERS",
    "OutputAxes",
    "OutputSink",
    "ScoreSink",
    "reduce_scores",
    "select_output",
    "parse_range",
]

REDUCERS = ("raw", "delta", "log2fc", "mean-centred", "l2")


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


def reduce_scores(mutant: Any, reference: Any, kind: str, name: str = "") -> Any:
    """The ``kind`` reducer of ``mutant`` ``(n, P, A, *out)`` against
    ``reference`` ``(n, *out)``."""
    if kind not in REDUCERS:
        raise InputError(f"reduce must be one of {REDUCERS}, got {kind!r}")
    if kind == "raw":
        return mutant
    xp = _xp(mutant)
    ref = reference[:, None, None]
    if kind == "log2fc":
        if bool((mutant <= 0).any()) or bool((reference <= 0).any()):
            raise InputError(
                f"log2fc needs positive outputs, but output '{name}' has values "
                "<= 0; use delta, or an output after softplus or exp"
            )
        return xp.log2(mutant) - xp.log2(ref)
    delta = mutant - ref
    if kind == "delta":
        return delta
    if kind == "mean-centred":
        return delta - delta.mean(axis=2, keepdims=True)
    return xp.sqrt((delta * delta).sum(axis=2))


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

    Parameters
    ----------
    kind : str
        One of :data:`REDUCERS`.
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
    ):
        if kind not in REDUCERS:
            raise InputError(f"reduce must be one of {REDUCERS}, got {kind!r}")
        self.kind = kind
        self.axes = list(axes)
        self.to_model = to_model
        self.tasks = tasks
        self.sum_over = sum_over
        self.rows = dict(rows or {})
        self.picks = None if picks is None else set(picks)
        self.scores: list = []
        self.reference: list = []
        self._block: list = []
        self._b0 = 0

    def _select(self, k: int, array, lead: int):
        return select_output(
            self.to_model(k, array, lead), self.axes[k], lead, self.tasks, self.sum_over
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
            self.sel.append(sel)
            head = (n_seqs, n_positions) + (() if self.kind == "l2" else (n_alts,))
            self.scores.append(xp.empty(head + sel, dtype=dtype))
            self.reference.append(xp.empty((n_seqs,) + sel, dtype=dtype))

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
        self._block[k][seq - self._b0, pos, alt] = self._select(k, values, 1)

    def end_block(self, b0: int, b1: int) -> None:
        for k, block in enumerate(self._block):
            if block is None:
                continue
            self.scores[k][b0:b1] = reduce_scores(
                block, self.reference[k][b0:b1], self.kind, self.axes[k].name
            )
        self._block = []
