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
        try:
            self._fa = pyfaidx.Fasta(self.path, as_raw=True, sequence_always_upper=True)
        except Exception as err:  # pyfaidx raises several types for bad files
            raise InputError(f"cannot index genome '{self.path}': {err}") from None
        self.lengths = {name: len(rec) for name, rec in self._fa.records.items()}

    def fetch(self, chrom: str, start: int, end: int) -> str:
        """Bases ``[start, end)`` of ``chrom`` (0-based), upper case."""
        return str(self._fa[chrom][start:end])


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

    def batches(
        self, size: int, select: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        wanted = np.arange(len(self)) if select is None else np.asarray(select)
        for i in range(0, len(wanted), size):
            idx = wanted[i : i + size]
            x = np.stack(
                [
                    encode(
                        self.genome.fetch(
                            self.regions[j].chrom,
                            self.starts[j],
                            self.starts[j] + self.length,
                        ),
                        self.n_as,
                    )
                    for j in idx
                ]
            )
            yield idx, x
