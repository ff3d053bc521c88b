"""Sequences in: FASTA (plain or gzipped) and one-hot ``.npy`` / ``.npz``.

One-hot rows are in the order ``A, C, G, T``. Letters are case-insensitive and
``U`` reads as ``T``. ``N`` and the other IUPAC ambiguity codes
(``R Y S W K M B D H V``) become an all-zero row, or with ``n_as="uniform"`` a
row of 0.25 each. Anything else (digits, gaps, punctuation) is an error naming
the file, line and column.

FASTA files are read twice: a first pass validates the whole file and collects
the record names, so a bad record fails the run before any work and output
files can be laid out in full; the second pass streams the sequences in
batches, so memory does not grow with the file.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ismkernel.errors import InputError

__all__ = ["ALPHABET", "SequenceSource", "encode", "fit_length", "open_sequences"]

ALPHABET = "ACGT"
_AMBIGUOUS = "NRYSWKMBDHV"
_N_AS = ("zero", "uniform")


def _lookup(n_as: str) -> np.ndarray:
    """A 256 x 4 table from byte to one-hot row; NaN marks an invalid byte."""
    table = np.full((256, 4), np.nan, dtype=np.float32)
    fill = 0.0 if n_as == "zero" else 0.25
    for i, base in enumerate(ALPHABET):
        for c in (base, base.lower()):
            table[ord(c)] = 0.0
            table[ord(c), i] = 1.0
    for c in "Uu":
        table[ord(c)] = table[ord("T")]
    for c in _AMBIGUOUS + _AMBIGUOUS.lower():
        table[ord(c)] = fill
    return table


_TABLES = {mode: _lookup(mode) for mode in _N_AS}


def _check_n_as(n_as: str) -> str:
    if n_as not in _N_AS:
        raise InputError(f"n_as must be one of {_N_AS}, got {n_as!r}")
    return n_as


def encode(seq: str, n_as: str = "zero") -> np.ndarray:
    """One-hot ``(len(seq), 4)`` float32 rows of ``seq`` (A, C, G, T)."""
    raw = np.frombuffer(seq.encode("latin-1", "replace"), dtype=np.uint8)
    out = _TABLES[_check_n_as(n_as)][raw]
    if np.isnan(out[:, 0]).any():
        bad = int(np.flatnonzero(np.isnan(out[:, 0]))[0])
        raise InputError(
            f"sequence has an invalid character {seq[bad]!r} at position {bad + 1}; "
            "expected A, C, G, T, U or an IUPAC code such as N"
        )
    return out


def fit_length(
    x: np.ndarray, length: int, center: bool, name: str, n_as: str = "zero"
) -> np.ndarray:
    """``x`` (L, 4) cropped or padded around its centre to ``length`` rows.

    Padding rows are those of ``N``; an odd extra row goes to the end, and an
    odd extra cropped row is taken from the end.
    """
    have = x.shape[0]
    if have == length:
        return x
    if not center:
        raise InputError(
            f"sequence '{name}' has length {have} but the model takes {length}; "
            "pass --center (center=True) to crop or pad sequences around their "
            "centre"
        )
    if have > length:
        start = (have - length) // 2
        return x[start : start + length]
    fill = 0.0 if n_as == "zero" else 0.25
    left = (length - have) // 2
    out = np.full((length, x.shape[1]), fill, dtype=x.dtype)
    out[left : left + have] = x
    return out


_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def open_text(path: str):
    """A text file, gunzipped when its content is gzip (whatever its name);
    lines keep their endings, so ``\r\n`` is stripped by the reader. A UTF-8
    byte-order mark (which some Windows editors write) is skipped; UTF-16
    text is refused with a message saying so."""
    if os.path.isdir(path):
        raise InputError(f"'{path}' is a directory, not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(3)
    except OSError as err:
        raise InputError(f"cannot read '{path}': {err.strerror or err}") from None
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as g:
                head = g.read(3)
        except (OSError, EOFError) as err:  # a damaged gzip stream
            raise InputError(f"cannot read '{path}': {err}") from None
        f = gzip.open(path, "rt", encoding="latin-1", newline="")
    else:
        f = open(path, encoding="latin-1", newline="")
    if head[:2] in _UTF16_BOMS:
        f.close()
        raise InputError(
            f"'{path}' is UTF-16 text; save it as plain text (ASCII or UTF-8)"
        )
    if head[:3] == _UTF8_BOM:
        f.read(3)  # latin-1: one character per byte
    return f


@dataclass
class _Record:
    name: str
    line: int  # of the header, 1-based
    length: int


def _scan_fasta(path: str) -> Iterator[tuple[str, int, list[str]]]:
    """(name, header line, sequence lines) per record, validating the layout."""
    name = None
    header_line = 0
    parts: list[str] = []
    try:
        with open_text(path) as f:
            for number, line in enumerate(f, 1):
                line = line.rstrip("\r\n").strip()
                if not line:
                    continue
                if line.startswith(">"):
                    if name is not None:
                        yield name, header_line, parts
                    fields = line[1:].split()
                    if not fields:
                        raise InputError(
                            f"'{path}' line {number}: a FASTA header with no name"
                        )
                    name, header_line, parts = fields[0], number, []
                    continue
                if name is None:
                    if line.startswith((";", "#")):
                        continue  # comment lines before the first record
                    raise InputError(
                        f"'{path}' line {number} does not start a FASTA record (a "
                        "FASTA file starts with a '>name' header); is it a FASTA "
                        "file?"
                    )
                if "\x00" in line:
                    raise InputError(f"'{path}' line {number}: binary content")
                parts.append((number, line))
    except (OSError, EOFError) as err:  # gzip errors are OSError
        raise InputError(f"cannot read '{path}': {err}") from None
    if name is not None:
        yield name, header_line, parts


class SequenceSource:
    """Named sequences from a FASTA or one-hot file, fitted to one length.

    Parameters
    ----------
    path : str
        ``.fa``/``.fasta`` (gzipped or not; the content decides), ``.npy``
        (``(n, L, 4)`` or ``(n, 4, L)``) or ``.npz`` (array ``x``, ``onehot``
        or ``arr_0``, and optionally ``names``).
    length : int or None
        The model's sequence length; None when the model takes any (then all
        sequences must share one length).
    center : bool
        Crop or pad sequences of another length around their centre.
    n_as : {"zero", "uniform"}
        One-hot row of ``N`` and other ambiguity codes.

    Attributes
    ----------
    names : list of str
    length : int
        The length every sequence has after fitting.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        length: int | None,
        center: bool = False,
        n_as: str = "zero",
    ):
        self.path = os.fspath(path)
        self.center = center
        self.n_as = _check_n_as(n_as)
        if not os.path.exists(self.path):
            raise InputError(f"input file '{self.path}' does not exist")
        if os.path.isdir(self.path):
            raise InputError(f"input '{self.path}' is a directory, not a file")
        with open(self.path, "rb") as f:
            head = f.read(8)
        self._array = None
        if head.startswith(b"\x93NUMPY") or head.startswith(b"PK\x03\x04"):
            self._load_array(head.startswith(b"PK"))
            lengths = {self._array.shape[1]}
        else:
            self._index_fasta()
            lengths = {r.length for r in self._records}
        if length is None:
            if len(lengths) > 1 and not center:
                raise InputError(
                    f"'{self.path}' holds sequences of lengths {sorted(lengths)[:5]}; "
                    "the model takes any length, but one run needs one: pass "
                    "--center with --length, or split the file"
                )
            length = max(lengths)
        self.length = int(length)
        if not center:
            self._check_lengths()

    # -- reading -----------------------------------------------------------------
    def _load_array(self, is_npz: bool) -> None:
        try:
            data = np.load(self.path, allow_pickle=False)
        except Exception as err:
            raise InputError(
                f"cannot read '{self.path}' as NumPy data: {err}"
            ) from None
        names = None
        if is_npz:
            with data:
                key = next(
                    (k for k in ("x", "onehot", "arr_0") if k in data.files), None
                )
                if key is None:
                    raise InputError(
                        f"'{self.path}' has arrays {data.files}; expected one named "
                        "'x', 'onehot' or 'arr_0' (and optionally 'names')"
                    )
                arr = data[key]
                if "names" in data.files:
                    names = [str(n) for n in data["names"]]
        else:
            arr = data
        if arr.ndim != 3 or 4 not in arr.shape[1:]:
            raise InputError(
                f"'{self.path}' holds an array of shape {arr.shape}; expected one-hot "
                "sequences (n_seqs, seq_len, 4) or (n_seqs, 4, seq_len)"
            )
        if arr.shape[2] != 4:
            arr = arr.transpose(0, 2, 1)
        arr = np.asarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            raise InputError(f"'{self.path}' contains NaN or infinite values")
        if arr.shape[0] == 0:
            raise InputError(f"'{self.path}' holds no sequences")
        if names is None:
            names = [f"seq{i}" for i in range(arr.shape[0])]
        if len(names) != arr.shape[0]:
            raise InputError(
                f"'{self.path}' has {len(names)} names for {arr.shape[0]} sequences"
            )
        _check_unique(self.path, names)
        self._array = arr
        self.names = names

    def _index_fasta(self) -> None:
        records = []
        lines: dict[str, int] = {}
        for name, line, parts in _scan_fasta(self.path):
            if not parts:
                raise InputError(
                    f"'{self.path}' line {line}: record '{name}' has no sequence"
                )
            for number, text in parts:
                bad = _first_invalid(text)
                if bad is not None:
                    raise InputError(
                        f"'{self.path}' line {number}, column {bad + 1}: invalid "
                        f"character {text[bad]!r} in record '{name}'; expected A, C, "
                        "G, T, U or an IUPAC code such as N"
                    )
            if name in lines:
                raise InputError(
                    f"'{self.path}' line {line}: duplicate sequence name '{name}' "
                    f"(first at line {lines[name]})"
                )
            lines[name] = line
            records.append(_Record(name, line, sum(len(t) for _, t in parts)))
        if not records:
            raise InputError(f"'{self.path}' holds no sequences (an empty FASTA file?)")
        self._records = records
        self.names = [r.name for r in records]

    def _check_lengths(self) -> None:
        if self._array is not None:
            if self._array.shape[1] != self.length:
                raise InputError(
                    f"'{self.path}' holds sequences of length {self._array.shape[1]} "
                    f"but the model takes {self.length}; pass --center to crop or pad"
                )
            return
        for r in self._records:
            if r.length != self.length:
                raise InputError(
                    f"'{self.path}' line {r.line}: sequence '{r.name}' has length "
                    f"{r.length} but the model takes {self.length}; pass --center "
                    "to crop or pad sequences around their centre"
                )

    def __len__(self) -> int:
        return len(self.names)

    def batches(
        self, size: int, select: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(indices, x)`` batches of at most ``size`` sequences in file order,
        read in one streaming pass; ``x`` is ``(n, length, 4)`` float32.
        ``select`` limits which sequences come."""
        wanted = None if select is None else {int(i) for i in select}
        idx: list[int] = []
        rows: list[np.ndarray] = []
        for i, name, x in self._iter():
            if wanted is not None and i not in wanted:
                continue
            idx.append(i)
            rows.append(fit_length(x, self.length, self.center, name, self.n_as))
            if len(idx) == size:
                yield np.array(idx), np.stack(rows)
                idx, rows = [], []
        if idx:
            yield np.array(idx), np.stack(rows)

    def _iter(self) -> Iterator[tuple[int, str, np.ndarray]]:
        if self._array is not None:
            for i, name in enumerate(self.names):
                yield i, name, self._array[i]
            return
        for i, (name, _, parts) in enumerate(_scan_fasta(self.path)):
            yield i, name, encode("".join(t for _, t in parts), self.n_as)


def _first_invalid(text: str) -> int | None:
    raw = np.frombuffer(text.encode("latin-1", "replace"), dtype=np.uint8)
    bad = np.isnan(_TABLES["zero"][raw, 0])
    return int(np.flatnonzero(bad)[0]) if bad.any() else None


def _check_unique(path: str, names: list[str]) -> None:
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise InputError(
                f"'{path}': duplicate sequence name '{n}' (entries {seen[n]} and {i})"
            )
        seen[n] = i


def open_sequences(
    path: str | os.PathLike,
    length: int | None,
    center: bool = False,
    n_as: str = "zero",
) -> SequenceSource:
    """A :class:`SequenceSource` for ``path`` (see there)."""
    return SequenceSource(path, length, center, n_as)
