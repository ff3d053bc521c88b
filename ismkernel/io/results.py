"""ISM results in HDF5: laid out in full up front, filled as batches finish.

Layout (``n`` sequences, ``P`` positions, ``A`` alternatives)::

    /                      attrs: format, format_version, ismkernel_version,
                           model_file, model_sha256, input_file, alphabet,
                           reduce, tasks, sum_over, backend, center, n_as,
                           seqs_per_batch, batch_size, memory_budget, created
    /names                 (n,)       sequence names
    /digests               (n,)       digest of each sequence's one-hot rows
    /positions             (P,)       int64, 0-based
    /alternatives          (A, 4)     float32 rows; attrs labels ("A", "N", ...)
    /onehot                (n, L, 4)  float32, the sequences as scored
    /done                  (n,)       uint8, 1 once a sequence's rows are written
    /outputs/<name>/reference  (n, *out)          attrs name, axes
    /outputs/<name>/scores     (n, P, A, *out) or (n, P, *out) for l2

The other analyses write the same file with their own ``format``
(``ismkernel-scan``, ``ismkernel-pairwise``, ``ismkernel-design``):

- a scan: ``/positions`` holds the window starts, ``/alternatives`` the
  patterns ``(n_patterns, w, 4)`` (none for per-sequence shuffles), scores
  ``(n, starts, patterns, *out)``;
- pairwise: ``/positions`` holds the pairs ``(n_pairs, 2)``, ``/independent``
  which of them the plan proves never interact, scores ``(n, n_pairs, *out)``
  per pair (or ``(n, n_pairs, A, A, *out)``);
- design: scores are the objective before and after each round ``(n,
  rounds + 1)``, with ``/edits`` ``(n, rounds, 2)`` and ``/designed`` ``(n, L,
  4)``.

The file is laid out under a temporary name (``OUT.tmp``) and renamed into
place once its structure is complete and on disk, so a run killed at any
instant leaves no file or a valid one. Every dataset is contiguous and placed
when the file is created, with no fill: the file has its final length from
the start, but on most file systems the unwritten rows are holes that take
no disk space until written (a sparse file). A run then only writes rows
into their places, then sets ``done`` and flushes; nothing else in the file
changes, so an interruption cannot leave the structure half written. Rows
not marked done are undefined. Resuming recomputes exactly the batches not
marked done, with the batch layout the file records, after checking that
the input's sequences have the recorded digests (``digests`` are written
with the layout, so even unfinished rows are checked).

Format version 1 files (no ``digests``) resume with their finished rows
checked against the stored one-hot sequences.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass

import h5py
import numpy as np

from ismkernel.errors import InputError
from ismkernel.io.output import publish, remove_quietly

__all__ = [
    "ResultsFile",
    "OutputLayout",
    "sha256",
    "FORMAT",
    "onehot_digest",
    "results_bytes",
]

FORMAT = "ismkernel-ism"
#: The analyses a results file may hold, each its own ``format``.
KINDS = ("ism", "scan", "pairwise", "design")
FORMAT_VERSION = 2
_DIGEST_SIZE = 16  # bytes of BLAKE2b; stored as 32 hex characters

#: What a run computes: a resumed run must agree with the file on these.
RUN_KEYS = (
    "model_sha256",
    "reduce",
    "tasks",
    "sum_over",
    "center",
    "n_as",
    "outputs",
    "dtype",
    "kind",
    "width",
    "patterns",
    "n_shuffles",
    "kmer",
    "seed",
    "max_distance",
    "rounds",
    "objective",
    "objective_output",
    "beam",
    "tol",
)
#: How a run computes (batching, backend): a resumed run takes these from the
#: file, so it splits and computes its batches as the interrupted run did.
HOW_KEYS = ("seqs_per_batch", "batch_size", "memory_budget", "backend")


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def onehot_digest(x: np.ndarray) -> bytes:
    """Digest of one sequence's one-hot rows as scored, ``(seq_len, 4)``:
    what ``--resume`` compares, so a changed input is refused even where its
    names are the same."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    h = hashlib.blake2b(digest_size=_DIGEST_SIZE)
    h.update(repr(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest().encode()


@dataclass(frozen=True)
class OutputLayout:
    """One model output as stored: its name, the shape of one sequence's
    reference and scores, and names of the per-sample axes."""

    name: str
    reference_shape: tuple
    scores_shape: tuple
    axes: str


def results_bytes(n_rows: int, seq_len: int, outputs: list[OutputLayout]) -> int:
    """Bytes the rows of ``n_rows`` sequences take in a results file: what a
    run writes into its holes."""
    per_row = 4 * seq_len * 4 + 2 * _DIGEST_SIZE + 1
    for out in outputs:
        per_row += 4 * (
            int(np.prod(out.reference_shape)) + int(np.prod(out.scores_shape))
        )
    return n_rows * per_row


def _group_name(name: str) -> str:
    return name.replace("/", "|")


def _early() -> h5py.h5p.PropDCID:
    """Allocate a dataset's storage when it is created, and write no fill."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def _fapl(earliest: bool = False) -> h5py.h5p.PropFAID:
    """File access for writing results. Raw data goes straight to the file,
    not through HDF5's sieve buffer: a buffered write that fails (a full
    disk) surfaces only when the dataset is closed, where h5py can merely
    print it, and the rows would be marked done without their data."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
    fapl.set_sieve_buf_size(0)
    if earliest:
        fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    return fapl


def create_h5(path: str) -> h5py.File:
    """A new HDF5 file at ``path`` (truncated if it exists), written
    without the sieve buffer (see :func:`_fapl`) so every failed write
    raises where it happens."""
    fid = h5py.h5f.create(os.fsencode(path), h5py.h5f.ACC_TRUNC, fapl=_fapl(True))
    return h5py.File(fid)


def _open_rw(path: str) -> h5py.File:
    return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR, _fapl()))


def _attr(value):
    if value is None:
        return "none"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


class ResultsFile:
    """An open results file (see the module docstring for its layout)."""

    def __init__(self, f: h5py.File, path: str | None = None):
        self.f = f
        self.path = path or f.filename
        self.names = [n.decode() if isinstance(n, bytes) else n for n in f["names"][:]]
        self.digests = f["digests"][:] if "digests" in f else None

    @classmethod
    def create(
        cls,
        path: str,
        *,
        meta: dict,
        names: list[str],
        digests: list[bytes],
        seq_len: int,
        positions: np.ndarray,
        alternatives: np.ndarray,
        labels: list[str],
        outputs: list[OutputLayout],
        kind: str = "ism",
        static: dict | None = None,
        per_seq: dict | None = None,
    ) -> ResultsFile:
        """Lay the file out under ``path + ".tmp"``, rename it to ``path``
        once complete, and open it to be filled. ``static``: datasets
        written now (name to array); ``per_seq``: datasets filled as batches
        finish (name to ``(shape, dtype)`` per sequence)."""
        from ismkernel import __version__

        tmp = path + ".tmp"
        remove_quietly(tmp)
        try:
            with create_h5(tmp) as f:
                n = len(names)
                f.attrs["format"] = f"ismkernel-{kind}"
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["ismkernel_version"] = __version__
                f.attrs["alphabet"] = "ACGT"
                f.attrs["created"] = datetime.datetime.now(
                    datetime.timezone.utc
                ).isoformat()
                for key, value in meta.items():
                    f.attrs[key] = _attr(value)
                f.create_dataset(
                    "names", data=np.array(names, dtype=h5py.string_dtype())
                )
                f.create_dataset(
                    "digests", data=np.array(digests, dtype=f"S{2 * _DIGEST_SIZE}")
                )
                f.create_dataset(
                    "positions", data=np.asarray(positions, dtype=np.int64)
                )
                alts = f.create_dataset(
                    "alternatives", data=alternatives.astype(np.float32)
                )
                alts.attrs["labels"] = json.dumps(labels)
                f.create_dataset("onehot", (n, seq_len, 4), np.float32, dcpl=_early())
                f.create_dataset("done", data=np.zeros(n, dtype=np.uint8))
                for name, value in (static or {}).items():
                    f.create_dataset(name, data=np.asarray(value))
                for name, (shape, dtype) in (per_seq or {}).items():
                    f.create_dataset(name, (n,) + tuple(shape), dtype, dcpl=_early())
                group = f.create_group("outputs")
                # HDF5 lists groups by name, not in the model's order
                group.attrs["order"] = json.dumps(
                    [_group_name(out.name) for out in outputs]
                )
                for out in outputs:
                    g = group.create_group(_group_name(out.name))
                    g.attrs["name"] = out.name
                    g.attrs["axes"] = out.axes
                    g.create_dataset(
                        "reference",
                        (n,) + out.reference_shape,
                        np.float32,
                        dcpl=_early(),
                    )
                    g.create_dataset(
                        "scores", (n,) + out.scores_shape, np.float32, dcpl=_early()
                    )
                f.flush()  # raises here, where a failure at close may not
            with h5py.File(tmp, "r") as f:  # complete before it takes the name
                if f["digests"].shape != (n,) or f["done"][:].any():
                    raise OSError(f"laying out '{tmp}' failed")
            publish(tmp, path)
        except BaseException:
            remove_quietly(tmp)
            raise
        return cls(_open_rw(path), path)

    @classmethod
    def open_to_resume(
        cls,
        path: str,
        meta: dict,
        names: list[str],
        digests: list[bytes],
        positions: np.ndarray,
        alternatives: np.ndarray,
        kind: str = "ism",
    ) -> ResultsFile:
        """Open ``path`` to continue the run ``meta`` describes, after checking
        that it is that run, on the same sequences (by content)."""
        again = "rerun with --force to start it over, or write to another file"
        try:
            f = _open_rw(path)
        except OSError as err:
            if "lock" in str(err).lower():
                raise InputError(
                    f"cannot resume '{path}': another program has it open (HDF5's "
                    "file lock); close it and retry"
                ) from None
            raise InputError(
                f"cannot resume '{path}': it is not a readable HDF5 file ({err}); "
                f"{again}"
            ) from None
        try:
            if f.attrs.get("format") != f"ismkernel-{kind}" or "done" not in f:
                held = f.attrs.get("format")
                label = "ISM" if kind == "ism" else kind
                raise InputError(
                    f"cannot resume '{path}': it is not an ismkernel {label} results "
                    "file"
                    + (f" (it holds {held!r})" if isinstance(held, str) else "")
                    + f"; {again}"
                )
            version = int(f.attrs.get("format_version", 0))
            if version > FORMAT_VERSION:
                raise InputError(
                    f"cannot resume '{path}': it was written by a newer ismkernel "
                    f"(file format {version}); resume it with that version"
                )
            for key in RUN_KEYS:
                if key in meta and f.attrs.get(key) != _attr(meta[key]):
                    raise InputError(
                        f"cannot resume '{path}': it was written with {key}="
                        f"{f.attrs.get(key)!r}, this run has {_attr(meta[key])!r}"
                    )
            results = cls(f, path)
            results._check_sequences(names, digests)
            for key, value in (
                ("positions", positions),
                ("alternatives", alternatives),
            ):
                have = f[key][:]
                if have.shape != np.shape(value) or not np.array_equal(have, value):
                    raise InputError(
                        f"cannot resume '{path}': it was written with other {key}"
                    )
        except BaseException:
            f.close()
            raise
        return results

    def _check_sequences(self, names: list[str], digests: list[bytes]) -> None:
        """The input's sequences are the file's: same names in the same order
        and the same one-hot content (the recorded digests; in a version 1
        file, the finished rows)."""
        path = self.path
        again = "rerun with --force to start it over, or write to another file"
        if len(names) != len(self.names):
            raise InputError(
                f"cannot resume '{path}': it holds {len(self.names)} sequences, "
                f"the input {len(names)}; {again}"
            )
        for i, (have, want) in enumerate(zip(self.names, names)):
            if have != want:
                raise InputError(
                    f"cannot resume '{path}': sequence {i + 1} is '{want}' in the "
                    f"input but '{have}' in the file; {again}"
                )
        if self.digests is not None:
            recorded = list(self.digests)
            rows = range(len(names))
        else:
            rows = np.flatnonzero(self.f["done"][:])
            recorded = [onehot_digest(self.f["onehot"][i]) for i in rows]
        for i, have in zip(rows, recorded):
            if have != digests[i]:
                raise InputError(
                    f"cannot resume '{path}': sequence '{names[i]}' (number "
                    f"{i + 1}) differs from the one this file was started with "
                    f"(same name, other bases): the input changed; {again}"
                )

    def how(self) -> dict:
        """The batching and backend settings the file was written with."""
        out = {}
        for key in HOW_KEYS:
            value = self.f.attrs.get(key)
            out[key] = None if value == "none" else value
        return out

    def pending(self) -> np.ndarray:
        """Indices of the sequences not written yet."""
        return np.flatnonzero(self.f["done"][:] == 0)

    def n_done(self) -> int:
        return int(self.f["done"][:].sum())

    def outputs(self) -> list[h5py.Group]:
        """The output groups in the model's order (the order of the layouts
        the file was made with), whatever order HDF5 lists them in."""
        return _ordered(self.f)

    def write(
        self,
        index: np.ndarray,
        onehot: np.ndarray,
        references: list[np.ndarray],
        scores: list[np.ndarray],
        extra: dict | None = None,
    ) -> None:
        """Write the rows of sequences ``index`` (sorted), then mark them done
        (``extra``: rows of the per-sequence datasets, by name).
        Rows whose sequence is not the one recorded at layout (the input file
        changed while the run read it) are refused before anything is
        written."""
        index = np.asarray(index)
        if self.digests is not None:
            for i, row in zip(index, onehot):
                if onehot_digest(row) != self.digests[i]:
                    raise InputError(
                        f"sequence '{self.names[i]}' (number {i + 1}) read now "
                        "differs from the same sequence read when the run started: "
                        f"the input changed during the run. '{self.path}' keeps the "
                        f"{self.n_done()} sequences finished before; rerun with "
                        "--force"
                    )
        sel = (
            slice(int(index[0]), int(index[-1]) + 1)
            if np.all(np.diff(index) == 1)
            else index
        )
        self.f["onehot"][sel] = onehot
        for g, ref, sc in zip(self.outputs(), references, scores):
            g["reference"][sel] = np.asarray(ref, dtype=np.float32)
            g["scores"][sel] = np.asarray(sc, dtype=np.float32)
        for name, value in (extra or {}).items():
            self.f[name][sel] = value
        self.f.flush()
        done = self.f["done"]
        done[sel] = 1
        self.f.flush()

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_results(path: str | os.PathLike, seq: int | str | None = None) -> dict:
    """A results file read into memory, or only sequence ``seq`` (index or
    name) of it: ``names``, ``positions``, ``alternatives``, ``labels``,
    ``onehot``, ``done``, ``attrs``, ``index`` (the row read, or None) and
    ``outputs`` (name to ``{"reference", "scores", "axes"}``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(
            f"results file '{path}' "
            + ("is a directory" if os.path.isdir(path) else "does not exist")
        )
    try:
        # Without HDF5's lock, so a running job's finished rows can be read:
        # its writer changes no metadata after the layout, only rows and flags.
        f = h5py.File(path, "r", locking=False)
    except OSError as err:
        raise InputError(
            f"cannot open results file '{path}': it is not a readable HDF5 file ({err})"
        ) from None
    with f:
        fmt = f.attrs.get("format")
        kinds = [f"ismkernel-{k}" for k in KINDS]
        if fmt not in kinds:
            raise InputError(
                f"'{path}' is not an ismkernel results file"
                + (f" (it is {fmt!r})" if isinstance(fmt, str) else "")
            )
        names = [n.decode() if isinstance(n, bytes) else n for n in f["names"][:]]
        done = f["done"][:].astype(bool)
        row: int | slice = slice(None)
        index = None
        if seq is not None:
            index = _find(names, seq, path)
            if not done[index]:
                raise InputError(
                    f"sequence {seq!r} of '{path}' has not been scored yet (the run "
                    "was interrupted before it; finish it with --resume)"
                )
            row = index
        out = {
            "names": names,
            "positions": f["positions"][:],
            "alternatives": f["alternatives"][:],
            "labels": json.loads(f["alternatives"].attrs["labels"]),
            "done": done,
            "attrs": {k: f.attrs[k] for k in f.attrs},
            "index": index,
            "onehot": f["onehot"][row],
            "outputs": {},
            "kind": fmt.split("-", 1)[1],
        }
        for name in ("independent",):
            if name in f:
                out[name] = f[name][:]
        for name in ("edits", "designed"):
            if name in f:
                out[name] = f[name][row]
        for g in _ordered(f):
            out["outputs"][g.attrs["name"]] = {
                "reference": g["reference"][row],
                "scores": g["scores"][row],
                "axes": g.attrs["axes"],
            }
    return out


def _ordered(f: h5py.File) -> list[h5py.Group]:
    """A file's output groups in the model's order: recorded at layout, or,
    in files made before it was, that of their ``outputs`` attribute."""
    group = f["outputs"]
    order = group.attrs.get("order")
    if order is None:
        names = json.loads(f.attrs.get("outputs", "[]") or "[]")
        order = json.dumps([_group_name(n) for n in names])
    keys = [k for k in json.loads(order) if k in group]
    keys += [k for k in group if k not in keys]
    return [group[k] for k in keys]


def _find(names: list[str], seq: int | str, path: str) -> int:
    if isinstance(seq, str) and seq in names:
        return names.index(seq)
    try:
        i = int(seq)
    except (TypeError, ValueError):
        raise InputError(
            f"'{path}' has no sequence named {seq!r} (names: {names[:5]}"
            + (", ...)" if len(names) > 5 else ")")
        ) from None
    if not 0 <= i < len(names):
        raise InputError(
            f"sequence index {i} is out of range for {len(names)} sequences"
        )
    return i
