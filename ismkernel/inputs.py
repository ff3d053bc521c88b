"""Validation of user arrays against a model, in one place, before any kernel.

Every message names the argument and says what was expected and what came.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ismkernel import config
from ismkernel.errors import InputError, ShapeError
from ismkernel.ir import TensorSpec

__all__ = [
    "as_feeds",
    "check_dtype",
    "check_positions",
    "check_alternatives",
    "check_memory_budget",
    "check_positive_int",
    "seq_input_index",
    "output_indices",
]


def check_dtype(dtype: Any) -> np.dtype:
    """The computation dtype; only float32 and float64 are offered."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in config.DTYPES:
        raise InputError(
            f"dtype={dtype!r} is not supported; use one of {config.DTYPES}"
        )
    return dt


def array_module(a: Any):
    """NumPy, or CuPy for a CuPy array (imported already if ``a`` is one)."""
    if type(a).__module__.startswith("cupy"):
        import sys

        return sys.modules["cupy"]
    return np


def _as_array(
    value: Any, name: str, dtype: np.dtype, device: bool = False
) -> np.ndarray:
    """``value`` as a finite numeric array of ``dtype``. A GPU array stays on
    its device where ``device`` (the cuda backend), else is refused."""
    on_gpu = hasattr(value, "__cuda_array_interface__") and not isinstance(
        value, np.ndarray
    )
    if on_gpu and not device:
        raise InputError(
            f"{name} is a GPU array; this backend takes NumPy arrays (copy it to "
            "the host with .get(), or use backend='cuda')"
        )
    xp = array_module(value) if on_gpu else np
    arr = xp.asarray(value)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or arr.dtype == np.bool_
    ):
        raise InputError(
            f"{name} has dtype {arr.dtype}; expected a real numeric array (float, "
            "int or bool)"
        )
    arr = arr.astype(dtype, copy=False)
    if arr.size and not bool(xp.all(xp.isfinite(arr))):
        bad = np.argwhere(~np.isfinite(np.asarray(arr.get() if on_gpu else arr)))[0]
        raise InputError(
            f"{name} contains NaN or infinite values (first at index {tuple(int(i) for i in bad)})"
        )
    return arr


def _check_shape(arr: np.ndarray, spec: TensorSpec, name: str) -> None:
    expected = ("n_seqs",) + tuple(spec.shape)
    shown = "(" + ", ".join("seq_len" if d is None else str(d) for d in expected) + ")"
    ok = arr.ndim == len(expected) and all(
        d is None or d == a for d, a in zip(spec.shape, arr.shape[1:])
    )
    if not ok:
        raise ShapeError(
            f"{name} has shape {arr.shape} but model input '{spec.name}' expects {shown}"
        )


def as_feeds(
    specs: Sequence[TensorSpec],
    x: Any,
    dtype: np.dtype,
    name: str = "x",
    device: bool = False,
) -> list[np.ndarray]:
    """Arrays for the model inputs, in model input order, validated and cast.

    ``x`` is an array (single-input models), a list in model input order, or a
    dict keyed by input name.
    """
    if isinstance(x, Mapping):
        names = [s.name for s in specs]
        unknown = set(x) - set(names)
        missing = [n for n in names if n not in x]
        if unknown or missing:
            raise InputError(
                f"{name} is a dict with keys {sorted(x)}; the model inputs are {names}"
                + (f" (missing {missing})" if missing else "")
            )
        values = [x[n] for n in names]
        labels = [f"{name}[{n!r}]" for n in names]
    elif isinstance(x, (list, tuple)):
        if len(x) != len(specs):
            raise InputError(
                f"{name} is a list of {len(x)} arrays; the model has {len(specs)} "
                f"inputs ({[s.name for s in specs]})"
            )
        values = list(x)
        labels = [f"{name}[{i}]" for i in range(len(x))]
    else:
        if len(specs) != 1:
            raise InputError(
                f"the model has {len(specs)} inputs ({[s.name for s in specs]}); pass "
                f"{name} as a list in that order or a dict by name"
            )
        values, labels = [x], [name]
    feeds = []
    for value, label, spec in zip(values, labels, specs):
        arr = _as_array(value, label, dtype, device)
        _check_shape(arr, spec, label)
        feeds.append(arr)
    n = {f.shape[0] for f in feeds}
    if len(n) > 1:
        raise ShapeError(
            f"the arrays of {name} hold different numbers of sequences: {sorted(n)}"
        )
    return feeds


def seq_input_index(specs: Sequence[TensorSpec], seq_input: Any) -> int:
    """Which input ISM mutates: by name or index, else the one with 4 channels."""
    names = [s.name for s in specs]
    if seq_input is None:
        candidates = [
            i
            for i, s in enumerate(specs)
            if len(s.shape) == 2 and s.shape[-1] == config.SEQUENCE_CHANNELS
        ]
        index = candidates[0] if len(candidates) == 1 else 0
    elif isinstance(seq_input, str):
        if seq_input not in names:
            raise InputError(
                f"seq_input={seq_input!r} is not a model input; inputs: {names}"
            )
        index = names.index(seq_input)
    elif isinstance(seq_input, (int, np.integer)) and not isinstance(seq_input, bool):
        if not 0 <= seq_input < len(specs):
            raise InputError(
                f"seq_input={seq_input} is out of range for {len(specs)} inputs"
            )
        index = int(seq_input)
    else:
        raise InputError(f"seq_input must be an input name or index, got {seq_input!r}")
    if len(specs[index].shape) != 2:
        raise ShapeError(
            f"input '{names[index]}' has per-sample shape {specs[index].shape}; ISM "
            "mutates an input of shape (seq_len, n_channels)"
        )
    return index


def output_indices(
    names: Sequence[str], outputs: Any, what: str = "output"
) -> list[int]:
    """Indices of ``outputs`` (a name, an index, or a list of them; None: all)
    among the model outputs ``names``."""
    if outputs is None:
        return list(range(len(names)))
    if isinstance(outputs, (str, int, np.integer)):
        outputs = [outputs]
    picks = []
    for o in outputs:
        if isinstance(o, str):
            if o not in names:
                raise InputError(
                    f"{what} {o!r} is not a model output; outputs: {list(names)}"
                )
            picks.append(list(names).index(o))
        elif (
            isinstance(o, (int, np.integer))
            and not isinstance(o, bool)
            and 0 <= o < len(names)
        ):
            picks.append(int(o))
        else:
            raise InputError(
                f"{what} {o!r} is neither an output name nor an index below {len(names)}"
            )
    return picks


def check_positive_int(value: Any, name: str) -> int | None:
    """``value`` as an int if it is a positive integer, None if None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer or None, got {value!r}")
    return int(value)


def _slice_positions(positions: slice, seq_len: int) -> np.ndarray:
    """A slice of positions, held to the same range as an array of them:
    no negative bounds (which a slice would count from the end) and no end
    past the sequence (which a slice would clip)."""
    bounds = {"start": positions.start, "stop": positions.stop}
    for what, value in bounds.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputError(
                f"positions={positions!r}: its {what} must be an integer or None, "
                f"got {value!r}"
            )
        if not 0 <= value <= seq_len:
            raise InputError(
                f"positions={positions!r} is out of range for sequence length "
                f"{seq_len} (valid positions 0..{seq_len - 1}; a slice's stop may "
                f"be at most {seq_len})"
            )
    step = positions.step
    if step is not None and (
        isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1
    ):
        raise InputError(
            f"positions={positions!r}: its step must be a positive integer or "
            f"None, got {step!r}"
        )
    return np.arange(seq_len, dtype=np.int64)[positions]


def check_positions(positions: Any, seq_len: int) -> np.ndarray:
    """Positions as an int64 array; None means all, a slice is resolved
    (bounds outside ``0..seq_len`` are refused, not clipped)."""
    if positions is None:
        return np.arange(seq_len, dtype=np.int64)
    if isinstance(positions, slice):
        return _slice_positions(positions, seq_len)
    arr = np.asarray(positions)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise InputError(
            f"positions must be None, a slice or a 1-D integer array, got "
            f"{arr.dtype} array of shape {arr.shape}"
        )
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= seq_len)]
    if bad.size:
        raise InputError(
            f"positions out of range: {bad[:5].tolist()} (sequence length {seq_len}, "
            f"valid positions 0..{seq_len - 1})"
        )
    return arr


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def check_memory_budget(value: Any, what: str = "memory_budget") -> int | None:
    """A byte count: a positive integer, or text such as ``"1000000"``,
    ``"512M"``, ``"2G"`` or ``"1.5GiB"`` (K, M, G, T are powers of 1024);
    None stays None. The command line's ``--memory-budget`` and the Python
    API take the same values."""
    if value is None:
        return None
    wrong = InputError(
        f"{what} takes bytes such as 512M or 2G (or a positive integer), got {value!r}"
    )
    if isinstance(value, bool):
        raise wrong
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, str):
        text = value.strip().upper()
        for tail in ("IB", "B"):
            if text.endswith(tail) and len(text) > len(tail):
                text = text[: -len(tail)]
                break
        scale = 1
        if text and text[-1] in _UNITS:
            scale, text = _UNITS[text[-1]], text[:-1]
        try:
            amount = float(text) if scale > 1 else int(text)
        except ValueError:
            raise wrong from None
        if not np.isfinite(amount):
            raise wrong
        number = int(amount * scale)
    else:
        raise wrong
    if number < 1:
        raise InputError(f"{what} must be positive, got {value!r}")
    return number


def check_alternatives(
    alternatives: Any, n_channels: int, dtype: np.dtype
) -> np.ndarray:
    """Alternatives as an ``(n_alts, n_channels)`` array; None means identity."""
    if alternatives is None:
        return np.eye(n_channels, dtype=dtype)
    arr = _as_array(alternatives, "alternatives", dtype)
    if arr.ndim != 2 or arr.shape[1] != n_channels or arr.shape[0] == 0:
        raise ShapeError(
            f"alternatives has shape {arr.shape}; expected (n_alts, {n_channels}) for "
            f"an input with {n_channels} channels"
        )
    return arr
