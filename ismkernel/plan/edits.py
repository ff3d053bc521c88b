"""What each mutant writes into the mutated input: a plan's *edits*.

An edit is made at a *site*: rows ``start + offsets`` of the mutated input
(offsets ascending from 0, so the site changes rows ``[start, start +
span)`` at most) are set to one of the site's *variants*, ``k`` rows each.
Mutant ``(sequence, site, variant)`` is the input with that edit.

- Point mutations (ISM): one row per site, the alternatives as variants.
- Window scans: ``w`` consecutive rows per site, patterns as variants
  (occlusion, a motif, shuffles).
- Double mutants: two rows per site (a pair of positions), every pair of
  alternatives as variants.

The values written may be shared by every site, differ per site, or per
sequence and site (shuffles of each sequence's own window).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Edits"]


@dataclass
class Edits:
    """Edits of the mutated input.

    Attributes
    ----------
    starts : ndarray of int64, shape (n_sites,)
        First row of each site.
    offsets : ndarray of int64, shape (n_sites, k)
        Rows written at each site, relative to its start, ascending, the
        first 0.
    values : ndarray
        The rows written: ``(n_variants, k, n_channels)`` for every site,
        ``(n_sites, n_variants, k, n_channels)`` per site, or ``(n_seqs,
        n_sites, n_variants, k, n_channels)`` per sequence and site.
    """

    starts: np.ndarray
    offsets: np.ndarray
    values: np.ndarray

    @classmethod
    def point(cls, positions: np.ndarray, alternatives: np.ndarray) -> Edits:
        """Point mutations: row ``positions[p]`` set to ``alternatives[a]``."""
        positions = np.asarray(positions, dtype=np.int64)
        return cls(
            positions,
            np.zeros((len(positions), 1), dtype=np.int64),
            np.asarray(alternatives)[:, None, :],
        )

    @property
    def n_sites(self) -> int:
        return len(self.starts)

    @property
    def n_variants(self) -> int:
        return self.values.shape[-3]

    @property
    def k(self) -> int:
        """Rows written per site."""
        return self.offsets.shape[1]

    @property
    def spans(self) -> np.ndarray:
        """Per site, rows from its start to its last written row, inclusive."""
        return self.offsets[:, -1] + 1

    @property
    def per_sequence(self) -> bool:
        return self.values.ndim == 5

    @property
    def single_row(self) -> bool:
        """One row per site, the same variants everywhere: point mutations,
        whose first convolution is a lookup of kernel taps."""
        return self.k == 1 and self.values.ndim == 3

    def variant_rows(self) -> np.ndarray:
        """The shared variants' rows, ``(n_variants, n_channels)`` (single-row
        edits only)."""
        return self.values[:, 0, :]

    def rows(self, seq: np.ndarray, site: np.ndarray, variant: np.ndarray):
        """The ``(m, k, n_channels)`` rows mutants ``(seq, site, variant)``
        write (``seq``: absolute indices of the run's sequences)."""
        if self.values.ndim == 3:
            return self.values[variant]
        if self.values.ndim == 4:
            return self.values[site, variant]
        return self.values[seq, site, variant]

    def unchanged(self, x: np.ndarray) -> np.ndarray:
        """``(n_seqs, n_sites, n_variants)``: whether the edit writes what the
        sequence already holds (the mutant is the reference, copied)."""
        rows = np.clip(self.starts[:, None] + self.offsets, 0, x.shape[1] - 1)
        held = x[:, rows]  # (n, sites, k, C)
        values = self.values
        if values.ndim == 3:
            values = values[None, None]
        elif values.ndim == 4:
            values = values[None]
        return np.all(held[:, :, None] == values, axis=(-2, -1))

    def subset(self, sites: np.ndarray) -> Edits:
        """The edits of ``sites`` only."""
        values = self.values
        if values.ndim == 4:
            values = values[sites]
        elif values.ndim == 5:
            values = values[:, sites]
        return Edits(self.starts[sites], self.offsets[sites], values)
