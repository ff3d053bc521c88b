"""Saturation mutagenesis of a bundled example model, end to end.

The model is a small BPNet-style network (dilated residual convolutions, a
profile head and a count head) saved by Keras 3; ismkernel reads it with h5py
only and runs naive ISM with its reference backend.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import ismkernel

MODEL = (
    Path(__file__).resolve().parent.parent / "tests/fixtures/keras/bpnet_mini.k3.keras"
)


def main() -> None:
    model = ismkernel.load_model(MODEL)
    print(model.summary())

    rng = np.random.default_rng(0)
    seq_len = model.inputs[0].shape[0]
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (8, seq_len))]

    start = time.perf_counter()
    result = ismkernel.ism(model, x, progress=True)
    seconds = time.perf_counter() - start
    n_mutants = x.shape[0] * seq_len * 3

    profile, counts = result.outputs
    print(
        f"\nISM of {x.shape[0]} sequences x {seq_len} positions x 4 bases "
        f"({n_mutants} mutants) in {seconds:.2f} s with the {result.backend} backend"
    )
    print(f"outputs: profile {profile.shape}, counts {counts.shape}")

    effect = np.linalg.norm(result.delta()[1][0], axis=-1)  # (positions, bases)
    top = np.argsort(effect.max(axis=1))[::-1][:5]
    print("\nsequence 0, positions whose best substitution moves the counts most:")
    for p in top:
        b = int(np.argmax(effect[p]))
        ref_base = "ACGT"[int(np.argmax(x[0, p]))]
        print(
            f"  position {p:3d}: {ref_base}>{'ACGT'[b]}  |delta counts| = {effect[p, b]:.4f}"
        )


if __name__ == "__main__":
    main()
