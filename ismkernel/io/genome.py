"""Genome access: an indexed reference FASTA (pyfaidx), VCF variants and BED
regions.

The ``genome`` extra installs pyfaidx; it builds the ``.fai`` index next to
the FASTA on first use. Coordinates follow the formats: VCF positions are
1-based, BED intervals 0-based half-open; windows here are 0-based half-open.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ismkernel.errors import BackendUnavailableError, InputError
from ismkernel.io.sequences import encode, open_text

__all__ = [
    "Genome",
    "Variant",
    "Region",
    "read_vcf",
    "read_bed",
    "window_for",
    "RegionSource",
]


class Genome:
    """A reference genome FASTA, read through its ``.fai`` index."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            import pyfaidx
        except ImportError:
            raise BackendUnavailableError(
                "reading a genome needs pyfaidx: pip install 'ismkernel[genome]'"
            ) from None
        if not os.path.exists(self.path):
            raise InputError(f"genome file '{self.path}' does not exist")
        if os.path.isdir(self.path):
            raise InputError(f"genome '{self.path}' is a directory, not a FASTA file")
        try:
            self._fa = pyfaidx.Fasta(self.path, as_raw=True, sequence_always_upper=True)
        except Exception as err:  # pyfaidx raises several types for bad files
            raise InputError(f"cannot index genome '{self.path}': {err}") from None
        self.index_path = getattr(self._fa.faidx, "indexname", self.path + ".fai")
        self._check_index()
        self.lengths = {name: len(rec) for name, rec in self._fa.records.items()}

    def _check_index(self) -> None:
        """Check that each record is where the ``.fai`` says. pyfaidx rebuilds
        an index older than its FASTA, but one that is newer and wrong (a
        FASTA replaced with its old timestamp, an index copied from
        elsewhere) makes it return other bytes, even other records' bases."""
        with open(self.path, "rb") as f:
            if f.read(2) == b"\x1f\x8b":
                return  # bgzip: offsets are in the uncompressed stream
            size = os.fstat(f.fileno()).st_size
            for name, rec in self._fa.faidx.index.items():
                lines, rest = divmod(rec.rlen, rec.lenc) if rec.lenc else (0, 0)
                end = rec.offset + lines * rec.lenb + rest
                ok = 0 < rec.offset <= size and end <= size
                if ok:
                    lo = max(0, rec.offset - 1024)
                    f.seek(lo)
                    before = f.read(rec.offset - lo)
                    if not before.endswith(b"\n"):
                        ok = False
                    elif b"\n" in before[:-1] or lo == 0:
                        header = before[:-1].rsplit(b"\n", 1)[-1].rstrip(b"\r")
                        fields = header[1:].split()
                        ok = header.startswith(b">") and bool(fields)
                        ok = ok and fields[0].decode("latin-1") == name
                if ok and rec.rlen:
                    # Just past the last base: a line end (or the end of file).
                    f.seek(end if rest else end - 1)
                    ok = f.read(1) in (b"\n", b"\r", b"")
                if not ok:
                    raise InputError(
                        f"genome index '{self.index_path}' does not match "
                        f"'{self.path}': record '{name}' is not where the index "
                        "says (the FASTA changed after it was indexed?). Delete "
                        f"'{self.index_path}' and rerun; it is rebuilt"
                    )

    def fetch(self, chrom: str, start: int, end: int) -> str:
        """Bases ``[start, end)`` of ``chrom`` (0-based), upper case."""
        seq = str(self._fa[chrom][start:end])
        if len(seq) != end - start:
            raise InputError(
                f"genome '{self.path}' gave {len(seq)} bases for {chrom}:[{start}, "
                f"{end}) instead of {end - start}; its index '{self.index_path}' "
                "does not match it. Delete the index and rerun; it is rebuilt"
            )
        return seq


@dataclass(frozen=True)
class Variant:
    """One VCF record's ALT allele: ``index`` is the record's place in the
    file, ``line`` its line number."""

    index: int
    line: int
    chrom: str
    pos: int  # 1-based
    id: str
    ref: str
    alt: str


def read_vcf(path: str | os.PathLike) -> list[Variant]:
    """The variants of a VCF (plain or gzipped), multi-allelic records split
    into one entry per ALT, in file order."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"VCF file '{path}' does not exist")
    out: list[Variant] = []
    seen_header = False
    index = 0
    with open_text(path) as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            if line.startswith("##"):
                continue
            if line.startswith("#"):
                seen_header = True
                continue
            fields = line.split("\t")
            if len(fields) < 5:
                raise InputError(
                    f"'{path}' line {number}: a VCF record needs at least 5 "
                    f"tab-separated columns (CHROM POS ID REF ALT), got {len(fields)}"
                )
            chrom, pos, vid, ref, alts = fields[:5]
            try:
                pos_i = int(pos)
            except ValueError:
                raise InputError(
                    f"'{path}' line {number}: POS {pos!r} is not an integer"
                ) from None
            for alt in alts.split(","):
                out.append(
                    Variant(index, number, chrom, pos_i, vid, ref.upper(), alt.upper())
                )
            index += 1
    if not seen_header and not out:
        raise InputError(f"'{path}' holds no VCF records")
    return out


@dataclass(frozen=True)
class Region:
    chrom: str
    start: int
    end: int
    name: str
    line: int


def read_bed(path: str | os.PathLike) -> list[Region]:
    """BED regions (the first three columns, and a name from the fourth)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"BED file '{path}' does not exist")
    out = []
    with open_text(path) as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line or line.startswith(("#", "track", "browser")):
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) < 3:
                raise InputError(
                    f"'{path}' line {number}: a BED line needs chrom, start and end"
                )
            try:
                start, end = int(fields[1]), int(fields[2])
            except ValueError:
                raise InputError(
                    f"'{path}' line {number}: start and end must be integers"
                ) from None
            if start < 0 or end <= start:
                raise InputError(f"'{path}' line {number}: empty or negative interval")
            name = fields[3] if len(fields) > 3 else f"{fields[0]}:{start}-{end}"
            out.append(Region(fields[0], start, end, name, number))
    if not out:
        raise InputError(f"'{path}' holds no regions")
    return out


def window_for(genome: Genome, chrom: str, center: int, length: int) -> tuple[int, str]:
    """``(start, reason)`` of the ``length``-long window whose position
    ``length // 2`` is the 0-based ``center``; ``reason`` is empty when the
    window can be read."""
    if chrom not in genome.lengths:
        return 0, f"contig '{chrom}' is not in the genome"
    start = center - length // 2
    if start < 0 or start + length > genome.lengths[chrom]:
        return start, (
            f"the {length}-bp window [{start}, {start + length}) runs off contig "
            f"'{chrom}' (length {genome.lengths[chrom]})"
        )
    return start, ""


class RegionSource:
    """BED regions as sequences: the model-length window centred on each
    region's midpoint, with the interface of
    :class:`~ismkernel.io.sequences.SequenceSource`."""

    def __init__(self, bed: str, genome: str, length: int | None, n_as: str = "zero"):
        self.path = os.fspath(bed)
        self.genome = Genome(genome)
        self.regions = read_bed(bed)
        if length is None:
            sizes = {r.end - r.start for r in self.regions}
            if len(sizes) > 1:
                raise InputError(
                    f"the model takes any length and '{bed}' has regions of several "
                    "sizes; give them one size"
                )
            length = sizes.pop()
        self.length = int(length)
        self.n_as = n_as
        self.starts = []
        for r in self.regions:
            start, reason = window_for(
                self.genome, r.chrom, (r.start + r.end) // 2, self.length
            )
            if reason:
                raise InputError(f"'{bed}' line {r.line}: region '{r.name}': {reason}")
            self.starts.append(start)
        self.names = [r.name for r in self.regions]
        if len(set(self.names)) != len(self.names):
            raise InputError(f"'{bed}' has duplicate region names")

    def __len__(self) -> int:
        return len(self.regions)

    def _window(self, j: int) -> np.ndarray:
        r = self.regions[j]
        try:
            bases = self.genome.fetch(
                r.chrom, self.starts[j], self.starts[j] + self.length
            )
            return encode(bases, self.n_as)
        except InputError as err:
            raise InputError(
                f"'{self.path}' line {r.line}: region '{r.name}': {err}"
            ) from None

    def batches(
        self, size: int, select: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        wanted = np.arange(len(self)) if select is None else np.asarray(select)
        for i in range(0, len(wanted), size):
            idx = wanted[i : i + size]
            yield idx, np.stack([self._window(j) for j in idx])
