"""ISM results in HDF5: laid out in full up front, filled as batches finish.

Layout (``n`` sequences, ``P`` positions, ``A`` alternatives)::

    /                      attrs: format, format_version, ismkernel_version,
                           model_file, model_sha256, input_file, alphabet,
                           reduce, tasks, sum_over, backend, center, n_as,
                           seqs_per_batch, batch_size, memory_budget, created
    /names                 (n,)       sequence names
    /positions             (P,)       int64, 0-based
    /alternatives          (A, 4)     float32 rows; attrs labels ("A", "N", ...)
    /onehot                (n, L, 4)  float32, the sequences as scored
    /done                  (n,)       uint8, 1 once a sequence's rows are written
    /outputs/<name>/reference  (n, *out)          attrs name, axes
    /outputs/<name>/scores     (n, P, A, *out) or (n, P, *out) for l2

Every dataset is contiguous and allocated when the file is created, so the
file's structure is complete and written before any score is computed; later
writes only fill allocated rows, then set ``done`` and flush. A run killed at
any moment (Ctrl-C, ``kill -9``) leaves a valid file in which the rows marked
done are complete; rows not marked done are undefined. Resuming recomputes
exactly the batches not marked done, with the batch layout the file records.
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

__all__ = ["ResultsFile", "OutputLayout", "sha256", "FORMAT"]

FORMAT = "ismkernel-ism"
FORMAT_VERSION = 1

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


@dataclass(frozen=True)
class OutputLayout:
    """One model output as stored: its name, the shape of one sequence's
    reference and scores, and names of the per-sample axes."""

    name: str
    reference_shape: tuple
    scores_shape: tuple
    axes: str


def _group_name(name: str) -> str:
    return name.replace("/", "|")


def _early() -> h5py.h5p.PropDCID:
    """Allocate a dataset's storage when it is created, and write no fill."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def _attr(value):
    if value is None:
        return "none"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


class ResultsFile:
    """An open results file (see the module docstring for its layout)."""

    def __init__(self, f: h5py.File):
        self.f = f
        self.path = f.filename

    @classmethod
    def create(
        cls,
        path: str,
        *,
        meta: dict,
        names: list[str],
        seq_len: int,
        positions: np.ndarray,
        alternatives: np.ndarray,
        labels: list[str],
        outputs: list[OutputLayout],
    ) -> ResultsFile:
        from ismkernel import __version__

        f = h5py.File(path, "w", libver="earliest")
        try:
            n = len(names)
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["ismkernel_version"] = __version__
            f.attrs["alphabet"] = "ACGT"
            f.attrs["created"] = datetime.datetime.now(
                datetime.timezone.utc
            ).isoformat()
            for key, value in meta.items():
                f.attrs[key] = _attr(value)
            f.create_dataset("names", data=np.array(names, dtype=h5py.string_dtype()))
            f.create_dataset("positions", data=np.asarray(positions, dtype=np.int64))
            alts = f.create_dataset(
                "alternatives", data=alternatives.astype(np.float32)
            )
            alts.attrs["labels"] = json.dumps(labels)
            shapes = {"onehot": (n, seq_len, 4), "done": (n,)}
            f.create_dataset("onehot", shapes["onehot"], np.float32, dcpl=_early())
            f.create_dataset("done", data=np.zeros(n, dtype=np.uint8))
            group = f.create_group("outputs")
            for out in outputs:
                g = group.create_group(_group_name(out.name))
                g.attrs["name"] = out.name
                g.attrs["axes"] = out.axes
                g.create_dataset(
                    "reference", (n,) + out.reference_shape, np.float32, dcpl=_early()
                )
                g.create_dataset(
                    "scores", (n,) + out.scores_shape, np.float32, dcpl=_early()
                )
            f.flush()
        except BaseException:
            f.close()
            raise
        return cls(f)

    @classmethod
    def open_to_resume(
        cls,
        path: str,
        meta: dict,
        names: list[str],
        positions: np.ndarray,
        alternatives: np.ndarray,
    ) -> ResultsFile:
        """Open ``path`` to continue the run ``meta`` describes, after checking
        that it is that run."""
        try:
            f = h5py.File(path, "r+")
        except OSError as err:
            raise InputError(f"cannot open '{path}' to resume it: {err}") from None
        try:
            if f.attrs.get("format") != FORMAT:
                raise InputError(f"'{path}' is not an ismkernel results file")
            for key in RUN_KEYS:
                if key in meta and f.attrs.get(key) != _attr(meta[key]):
                    raise InputError(
                        f"cannot resume '{path}': it was written with {key}="
                        f"{f.attrs.get(key)!r}, this run has {_attr(meta[key])!r}"
                    )
            stored = [n.decode() if isinstance(n, bytes) else n for n in f["names"][:]]
            if stored != list(names):
                raise InputError(
                    f"cannot resume '{path}': its sequences are not those of the input"
                )
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
        return cls(f)

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

    def outputs(self) -> list[h5py.Group]:
        return list(self.f["outputs"].values())

    def write(
        self,
        index: np.ndarray,
        onehot: np.ndarray,
        references: list[np.ndarray],
        scores: list[np.ndarray],
    ) -> None:
        """Write the rows of sequences ``index`` (sorted), then mark them done."""
        index = np.asarray(index)
        sel = (
            slice(int(index[0]), int(index[-1]) + 1)
            if np.all(np.diff(index) == 1)
            else index
        )
        self.f["onehot"][sel] = onehot
        for g, ref, sc in zip(self.outputs(), references, scores):
            g["reference"][sel] = np.asarray(ref, dtype=np.float32)
            g["scores"][sel] = np.asarray(sc, dtype=np.float32)
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
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"cannot open results file '{path}': {err}") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise InputError(f"'{path}' is not an ismkernel results file")
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
        }
        for g in f["outputs"].values():
            out["outputs"][g.attrs["name"]] = {
                "reference": g["reference"][row],
                "scores": g["scores"][row],
                "axes": g.attrs["axes"],
            }
    return out


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
