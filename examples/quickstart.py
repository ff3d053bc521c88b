"""The Python API on the bundled example model, end to end.

The model is a small convolutional network trained (by
``examples/make_example_model.py``) to output the logit that a 200-bp
sequence holds an AP-1 (``TGACTCA``) or a GATA (``AGATAAG``) site. ismkernel
reads its Keras file with h5py only, then scores every single-base
substitution of random sequences with two sites planted in each.
"""

from __future__ import annotations

import time

import numpy as np

import ismkernel

MOTIFS = {"TGACTCA": 50, "AGATAAG": 140}


def main() -> None:
    model = ismkernel.load_model(ismkernel.EXAMPLE_MODEL)
    print(model.summary())

    rng = np.random.default_rng(0)
    seq_len = model.inputs[0].shape[0]
    idx = rng.integers(0, 4, (16, seq_len))
    for motif, pos in MOTIFS.items():
        idx[:, pos : pos + len(motif)] = ["ACGT".index(b) for b in motif]
    x = np.eye(4, dtype=np.float32)[idx]

    start = time.perf_counter()
    result = ismkernel.ism(model, x, reduce="delta")
    seconds = time.perf_counter() - start
    n_mutants = x.shape[0] * seq_len * 3
    print(
        f"\nISM of {x.shape[0]} sequences x {seq_len} positions x 4 bases "
        f"({n_mutants} mutants) in {seconds:.2f} s with the {result.backend} backend"
    )

    (delta,) = result.scores  # (n_seqs, positions, bases, 1)
    importance = -delta[..., 0].mean(axis=(0, 2))  # mean loss of the logit
    top = np.sort(np.argsort(importance)[::-1][:14])
    print("positions whose substitution lowers the logit most:", top.tolist())
    for motif, pos in MOTIFS.items():
        print(f"  {motif} planted at {pos}-{pos + len(motif) - 1}")


if __name__ == "__main__":
    main()
