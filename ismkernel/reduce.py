"""Scores from ISM outputs: output selection and the reducers.

Every function takes arrays of either NumPy or CuPy and computes with the
array's own module, so a GPU backend reduces on the device before anything
is copied to the host.

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

from dataclasses import dataclass
from typing import Any

import numpy as np

from ismkernel.errors import InputError

__all__ = ["REDUCERS", "OutputAxes", "reduce_scores", "select_output", "parse_range"]

REDUCERS = ("raw", "delta", "log2fc", "mean-centred", "l2")


def _xp(a):
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
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
