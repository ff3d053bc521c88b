"""fastISM's benchmark architectures, built with Keras 2 (tf-keras); BPNet by
fastISM's own builder.

Run in the peer environment of ``benchmarks/requirements.txt``. Weights are
random (seeded) with non-trivial batch-norm statistics: speed and exactness do
not depend on training. Each builder returns an uncompiled ``tf.keras.Model``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def _keras():
    import tf_keras

    return tf_keras


def _dense_head(x, n_outputs: int):
    """Basset's head: Flatten, two dense layers of 1000 with batch norm, outputs."""
    k = _keras().layers
    x = k.Flatten()(x)
    for i in range(2):
        x = k.Dense(1000, activation="relu", name=f"fc{i + 1}")(x)
        x = k.BatchNormalization(name=f"bn_fc{i + 1}")(x)
    return k.Dense(n_outputs, name="fc3")(x)


def basset(seq_len: int = 1000, n_outputs: int = 164):
    """Basset (Kelley et al. 2016) as in fastISM's benchmarks."""
    k = _keras().layers
    inp = _keras().Input((seq_len, 4))
    x = inp
    for i, (filters, width, pool) in enumerate(
        [(300, 19, 3), (200, 11, 4), (200, 7, 4)]
    ):
        x = k.Conv1D(
            filters, width, padding="same", activation="relu", name=f"conv{i + 1}"
        )(x)
        x = k.BatchNormalization(name=f"bn{i + 1}")(x)
        x = k.MaxPooling1D(pool, name=f"pool{i + 1}")(x)
    x = _dense_head(x, n_outputs)
    return _keras().Model(inp, x, name=f"basset_{seq_len}")


def factorized_basset(seq_len: int = 1000, n_outputs: int = 10):
    """Factorized Basset: Basset's wide kernels split into stacks of narrow ones."""
    k = _keras().layers
    inp = _keras().Input((seq_len, 4))
    x = inp
    blocks = [
        ([(48, 3), (64, 3), (100, 3), (150, 7), (300, 7)], 3),
        ([(200, 7), (200, 3), (200, 3)], 4),
        ([(200, 7)], 4),
    ]
    for b, (convs, pool) in enumerate(blocks):
        for c, (filters, width) in enumerate(convs):
            name = f"conv{b + 1}{'abcde'[c]}"
            x = k.Conv1D(filters, width, padding="same", name=name)(x)
            x = k.BatchNormalization(name=f"{name}_bn")(x)
            x = k.ReLU(name=f"{name}_relu")(x)
        x = k.MaxPooling1D(pool, name=f"pool{b + 1}")(x)
    x = _dense_head(x, n_outputs)
    return _keras().Model(inp, x, name=f"factorized_basset_{seq_len}")


def bpnet(seq_len: int = 1000):
    """BPNet as fastISM builds and benchmarks it (``fastism.models.bpnet``, the
    published Keras BPNet): a 25-wide convolution, nine dilated residual
    convolutions (64 channels, dilation 1..256), a profile head that reshapes
    to ``(L, 1, 64)`` for a ``Conv2DTranspose(1, (25, 1), padding="same")``
    and flattens, and a count head (global average pooling, dense)."""
    from fastism.models.bpnet import bpnet_model

    return bpnet_model(seqlen=seq_len, name=f"bpnet_{seq_len}")


def beluga(seq_len: int = 2000, n_outputs: int = 2002):
    """A DeepSEA/Beluga-like model: six valid convolutions in three pooled
    pairs and two dense layers."""
    k = _keras().layers
    inp = _keras().Input((seq_len, 4))
    x = inp
    for b, filters in enumerate([320, 480, 640]):
        for c in range(2):
            x = k.Conv1D(filters, 8, activation="relu", name=f"conv{b + 1}{'ab'[c]}")(x)
        if b < 2:
            x = k.MaxPooling1D(4, 4, name=f"pool{b + 1}")(x)
    x = k.Flatten()(x)
    x = k.Dense(2003, activation="relu", name="fc1")(x)
    x = k.Dense(n_outputs, activation="sigmoid", name="fc2")(x)
    return _keras().Model(inp, x, name=f"beluga_{seq_len}")


#: Benchmark name -> (builder, keyword arguments).
MODELS = {
    "basset-1000": (basset, dict(seq_len=1000)),
    "basset-2000": (basset, dict(seq_len=2000)),
    "factorized-basset-1000": (factorized_basset, dict(seq_len=1000)),
    "bpnet-1000": (bpnet, dict(seq_len=1000)),
    "beluga-2000": (beluga, dict(seq_len=2000)),
}


def build(name: str, seed: int = 0):
    """Build benchmark model ``name`` with seeded random weights, including
    batch-norm statistics away from the identity."""
    import numpy as np
    import tensorflow as tf

    _keras().backend.clear_session()  # layer names as in a fresh session
    tf.keras.utils.set_random_seed(seed)
    fn, kwargs = MODELS[name]
    model = fn(**kwargs)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                    rng.normal(0, 0.1, beta.shape).astype("float32"),
                    rng.normal(0, 0.1, mean.shape).astype("float32"),
                    rng.uniform(0.5, 1.5, var.shape).astype("float32"),
                ]
            )
    return model
