"""Keras 3 ``.keras`` archives: a zip of ``config.json``, ``metadata.json`` and
``model.weights.h5``.

In ``model.weights.h5`` a layer's variables are ``<path>/vars/0``, ``1``, ... in
the layer's variable order, where ``<path>`` is ``layers/<key>`` nested for each
enclosing model and ``<key>`` is the snake-cased class name made unique within
its container (``conv1d``, ``conv1d_1``, ...): Keras 3 does not key weights by
layer name.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import TYPE_CHECKING

import h5py
import numpy as np

from ismkernel.errors import ModelFileError
from ismkernel.io.keras import build_graph, keras_major

if TYPE_CHECKING:
    from ismkernel.io.keras import LayerCall
    from ismkernel.ir import Graph

__all__ = ["read_keras_v3"]


class _ArchiveWeights:
    def __init__(self, f: h5py.File, path: str):
        self.f = f
        self.path = path

    def read(self, call: LayerCall, names: list[str]) -> dict[str, np.ndarray]:
        group_path = "/".join(f"layers/{key}" for key in call.kpath)
        if group_path not in self.f:
            raise ModelFileError(
                f"{call.where()}: '{self.path}' has no weights group '{group_path}' "
                "in model.weights.h5"
            )
        group = self.f[group_path]
        stored = group["vars"] if "vars" in group else {}
        if len(stored) != len(names):
            raise ModelFileError(
                f"{call.where()}: '{self.path}' stores {len(stored)} variables in "
                f"'{group_path}/vars', expected {len(names)} ({', '.join(names)})"
            )
        out = {}
        for i, name in enumerate(names):
            if str(i) not in stored:
                raise ModelFileError(
                    f"{call.where()}: weight '{name}' ('{group_path}/vars/{i}') is "
                    f"missing from '{self.path}'"
                )
            out[name] = np.asarray(stored[str(i)][()])
        return out


def read_keras_v3(path: str) -> tuple[Graph, dict]:
    """Read a Keras 3 ``.keras`` archive into an IR graph."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
            if "config.json" not in members:
                raise ModelFileError(
                    f"'{path}' is a zip archive without config.json; not a .keras model"
                )
            if "model.weights.h5" not in members:
                raise ModelFileError(f"'{path}' has no model.weights.h5")
            try:
                config = json.loads(archive.read("config.json"))
                meta = (
                    json.loads(archive.read("metadata.json"))
                    if "metadata.json" in members
                    else {}
                )
            except ValueError as err:
                raise ModelFileError(
                    f"'{path}': config.json is not valid JSON: {err}"
                ) from None
            weights = io.BytesIO(archive.read("model.weights.h5"))
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ModelFileError(
            f"cannot read '{path}' as a .keras archive ({err}); the file is truncated "
            "or corrupt"
        ) from None
    version = str(meta.get("keras_version", "3"))
    try:
        with h5py.File(weights, "r") as f:
            graph = build_graph(
                config, _ArchiveWeights(f, path), keras_major(version, 3)
            )
    except OSError as err:
        raise ModelFileError(f"cannot read the weights in '{path}' ({err})") from None
    return graph, {
        "format": "keras-v3",
        "keras_version": version,
        "producer": f"Keras {version}",
    }
