"""Train the bundled example model on synthetic sequences with planted motifs.

Run once, with Keras (regeneration only; ismkernel itself never needs it)::

    pip install tensorflow-cpu tf-keras
    python examples/make_example_model.py

It writes, inside the package (``ismkernel/data/``):

- ``example_model.h5``: a small convolutional network (Keras 2 HDF5) whose one
  output is the logit that a 200-bp sequence holds an AP-1 site (``TGACTCA``)
  or a GATA site (``AGATAAG``);
- ``example.fa``: eight test sequences with the motifs planted at known
  positions, written in their record names (e.g. ``ap1@40_gata@130``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import tf_keras as keras  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "ismkernel" / "data"
L = 200
MOTIFS = {"ap1": "TGACTCA", "gata": "AGATAAG"}
BASES = "ACGT"


def plant(seq: list[str], motif: str, pos: int) -> None:
    seq[pos : pos + len(motif)] = list(motif)


def make_set(rng: np.random.Generator, n: int):
    seqs, labels = [], []
    for _ in range(n):
        seq = list(rng.choice(list(BASES), L))
        label = 0.0
        taken = []
        for motif in MOTIFS.values():
            if rng.random() < 0.4:
                while True:
                    pos = int(rng.integers(0, L - len(motif)))
                    if all(abs(pos - t) > 10 for t in taken):
                        break
                plant(seq, motif, pos)
                taken.append(pos)
                label = 1.0
        seqs.append("".join(seq))
        labels.append(label)
    return seqs, np.array(labels, dtype=np.float32)


def onehot(seqs: list[str]) -> np.ndarray:
    idx = np.array([[BASES.index(b) for b in s] for s in seqs])
    return np.eye(4, dtype=np.float32)[idx]


def main() -> None:
    rng = np.random.default_rng(7)
    keras.utils.set_random_seed(7)
    seqs, y = make_set(rng, 30000)
    x = onehot(seqs)
    inp = keras.Input((L, 4), name="dna")
    h = keras.layers.Conv1D(24, 9, padding="same", activation="relu", name="conv1")(inp)
    h = keras.layers.MaxPooling1D(2, name="pool1")(h)
    h = keras.layers.Conv1D(24, 5, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.GlobalMaxPooling1D(name="gmp")(h)
    h = keras.layers.Dense(16, activation="relu", name="dense")(h)
    out = keras.layers.Dense(1, name="motif_logit")(h)
    model = keras.Model(inp, out, name="example")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)],
    )
    model.fit(x, y, batch_size=128, epochs=6, validation_split=0.1, verbose=2)

    test_seqs, test_y = make_set(np.random.default_rng(8), 2000)
    _, acc = model.evaluate(onehot(test_seqs), test_y, verbose=0)
    print(f"held-out accuracy: {acc:.3f}")

    OUT.mkdir(parents=True, exist_ok=True)
    model.save(OUT / "example_model.h5")

    plants = [
        {"ap1": 40, "gata": 130},
        {"ap1": 90},
        {"gata": 20},
        {"gata": 60, "ap1": 150},
        {},
        {"ap1": 10, "gata": 180},
        {"ap1": 100},
        {"gata": 100},
    ]
    frng = np.random.default_rng(9)
    with open(OUT / "example.fa", "w") as f:
        for spec in plants:
            seq = list(frng.choice(list(BASES), L))
            for name, pos in spec.items():
                plant(seq, MOTIFS[name], pos)
            name = "_".join(f"{k}@{v}" for k, v in spec.items()) or "background"
            f.write(f">{name}\n")
            text = "".join(seq)
            for i in range(0, L, 60):
                f.write(text[i : i + 60] + "\n")
    print(f"wrote {OUT / 'example_model.h5'} and {OUT / 'example.fa'}")


if __name__ == "__main__":
    main()
