"""Keras full-model HDF5 files (``model.save("m.h5")``), Keras 2 and Keras 3.

The file holds the model config as JSON in the ``model_config`` attribute and
the weights under ``model_weights/<layer>``, listed in order by that group's
``weight_names`` attribute. Keras 2 names weights ``<layer>/<var>:0``; Keras 3's
legacy saver names them by variable path (``<model>/<layer>/<var>``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import h5py
import numpy as np

from ismkernel.errors import ModelFileError
from ismkernel.io.keras import build_graph, keras_major

if TYPE_CHECKING:
    from ismkernel.io.keras import LayerCall
    from ismkernel.ir import Graph

__all__ = ["read_keras_h5"]


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _components(weight_name: str) -> list[str]:
    name = weight_name[:-2] if weight_name.endswith(":0") else weight_name
    return name.split("/")


class _LegacyWeights:
    def __init__(self, root: h5py.Group, path: str):
        self.root = root
        self.path = path

    def read(self, call: LayerCall, names: list[str]) -> dict[str, np.ndarray]:
        top = call.wpath[0]
        if top not in self.root:
            raise ModelFileError(
                f"{call.where()}: '{self.path}' has no weights group "
                f"'model_weights/{top}'"
            )
        group = self.root[top]
        listed = [_text(n) for n in group.attrs.get("weight_names", [])]
        comps = [_components(n) for n in listed]
        chosen: dict[str, str] = {}
        for var in names:
            match = None
            # Match by exact path components, most specific first: the layer's
            # name and the variable's, then the enclosing model names.
            for k in range(1, len(call.wpath) + 1):
                suffix = list(call.wpath[-k:]) + [var]
                hits = [n for n, c in zip(listed, comps) if c[-len(suffix) :] == suffix]
                if len(hits) == 1:
                    match = hits[0]
                    break
                if not hits:
                    break
            if match is None and len(call.wpath) == 1 and len(listed) == len(names):
                # A top-level layer whose variables carry another prefix (renamed
                # layer, name scope): exact variable names in the saved order.
                if [c[-1] for c in comps] == names:
                    match = listed[names.index(var)]
            if match is None:
                raise ModelFileError(
                    f"{call.where()}: '{self.path}' has no weight '{var}' for this "
                    f"layer in 'model_weights/{top}' (listed: {listed})"
                )
            chosen[var] = match
        out = {}
        for var, name in chosen.items():
            if name not in group or not isinstance(group[name], h5py.Dataset):
                raise ModelFileError(
                    f"{call.where()}: weight dataset 'model_weights/{top}/{name}' is "
                    f"listed but missing from '{self.path}'"
                )
            out[var] = np.asarray(group[name][()])
        return out


def read_keras_h5(path: str) -> tuple[Graph, dict]:
    """Read a Keras full-model HDF5 file into an IR graph.

    Returns
    -------
    graph : Graph
    info : dict
        ``format`` and ``keras_version`` of the file.
    """
    try:
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                if "model_weights" in f or "layer_names" in f.attrs or "layers" in f:
                    raise ModelFileError(
                        f"'{path}' holds weights but no model config (was it written "
                        "by save_weights?); ismkernel needs a whole model saved with "
                        "model.save(...)"
                    )
                raise ModelFileError(
                    f"'{path}' is an HDF5 file without a Keras model config; "
                    "ismkernel needs a whole model saved with model.save(...)"
                )
            try:
                config = json.loads(_text(f.attrs["model_config"]))
            except (ValueError, UnicodeDecodeError) as err:
                raise ModelFileError(
                    f"'{path}': model_config is not valid JSON: {err}"
                ) from None
            version = _text(f.attrs.get("keras_version", "2"))
            root = f["model_weights"] if "model_weights" in f else None
            if root is None:
                raise ModelFileError(
                    f"'{path}' has a model config but no 'model_weights' group"
                )
            major = keras_major(version, 2)
            graph = build_graph(config, _LegacyWeights(root, path), major)
    except OSError as err:
        raise ModelFileError(
            f"cannot read '{path}' as HDF5 ({err}); the file is truncated or corrupt"
        ) from None
    return graph, {
        "format": "keras-h5",
        "keras_version": version,
        "producer": f"Keras {version}",
    }
