"""Build an IR graph from a Keras model config and a source of its weights.

Shared by the Keras 2 HDF5 reader (:mod:`ismkernel.io.keras_h5`) and the Keras 3
archive reader (:mod:`ismkernel.io.keras_v3`). Handles Functional and Sequential
configs in both dialects, nested models (inlined), and layers called more than
once (one node per call, sharing the same weight arrays).
"""

from __future__ import annotations

import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ismkernel.errors import (
    IsmkernelWarning,
    ModelFileError,
    ShapeError,
    UnsupportedLayerError,
)
from ismkernel.io.keras_layers import (
    HANDLERS,
    IDENTITY_LAYERS,
    KERAS_LAYER_CLASSES,
    supported_layers,
)
from ismkernel.ir import Graph, Node
from ismkernel.ir import nodes as ops

__all__ = ["build_graph", "keras_major", "LayerCall", "WeightSource", "snake_case"]

MODEL_CLASSES = ("Functional", "Model", "Sequential")


class WeightSource(Protocol):
    """Where a format keeps a layer's weights."""

    path: str

    def read(self, call: LayerCall, names: list[str]) -> dict[str, np.ndarray]:
        """The arrays ``names`` of the layer of ``call``, in that order."""
        ...


def keras_major(version: str, default: int) -> int:
    """The major version in a ``keras_version`` string; ``default`` if unreadable."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return default


def snake_case(name: str) -> str:
    """Keras 3's snake-casing of a class name (it keys the weights archive)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


@dataclass(frozen=True)
class _Scope:
    prefix: str = ""  # node-name prefix
    wpath: tuple[str, ...] = ()  # layer names from the top model
    kpath: tuple[str, ...] = ()  # Keras 3 archive keys from the top model


@dataclass
class LayerCall:
    """One call of one Keras layer, as a handler sees it."""

    builder: _Builder
    layer: str
    layer_class: str
    cfg: dict[str, Any]
    node_base: str
    wpath: tuple[str, ...]
    kpath: tuple[str, ...]
    keras_major: int
    added: list[str] = field(default_factory=list)

    def where(self) -> str:
        return f"layer '{'/'.join(self.wpath)}' ({self.layer_class})"

    def in_shapes(
        self, xs: list[str], rank: int | None = None, n_inputs: int | None = 1
    ) -> list[tuple]:
        """Shapes of the inputs, checking their number and rank."""
        if n_inputs is not None and len(xs) != n_inputs:
            raise ShapeError(f"{self.where()} takes {n_inputs} input, got {len(xs)}")
        if n_inputs is None and len(xs) < 2:
            raise ShapeError(f"{self.where()} takes 2 or more inputs, got {len(xs)}")
        shapes = [self.builder.graph.nodes[x].shape for x in xs]
        if rank is not None:
            for s in shapes:
                if len(s) != rank:
                    raise ShapeError(
                        f"{self.where()} expects inputs of shape (seq_len, n_channels) "
                        f"per sample, got {s}"
                    )
                if s[-1] is None:
                    raise ShapeError(
                        f"{self.where()} needs a fixed number of channels, got {s}"
                    )
        return shapes

    def add(
        self,
        op: ops.Op,
        inputs: list[str],
        weights: dict[str, np.ndarray] | None = None,
        suffix: str = "",
    ) -> str:
        node = Node(
            name=self.node_base + suffix,
            op=op,
            inputs=tuple(inputs),
            weights=weights or {},
            layer="/".join(self.wpath),
            layer_class=self.layer_class,
        )
        return self.builder.graph.add(node)

    def weights(self, expected: dict[str, tuple]) -> dict[str, np.ndarray]:
        """The layer's weights by name, checked against ``expected`` shapes.

        Calls of a shared layer get the very same arrays.
        """
        cache = self.builder.weight_cache
        key = self.wpath
        if key not in cache:
            raw = self.builder.source.read(self, list(expected))
            out = {}
            for name, shape in expected.items():
                arr = raw[name]
                if arr.shape != tuple(shape):
                    raise ModelFileError(
                        f"{self.where()} in '{self.builder.source.path}': weight "
                        f"'{name}' has shape {arr.shape}, expected {tuple(shape)}"
                    )
                if not np.issubdtype(arr.dtype, np.floating):
                    raise ModelFileError(
                        f"{self.where()} in '{self.builder.source.path}': weight "
                        f"'{name}' has dtype {arr.dtype}, expected a float type"
                    )
                out[name] = np.ascontiguousarray(arr, dtype=np.float32)
            cache[key] = out
        return cache[key]


def _layer_name(entry: dict) -> str:
    name = entry.get("name") or entry.get("config", {}).get("name")
    if not isinstance(name, str):
        raise ModelFileError(
            f"a layer in the model config has no name: {str(entry)[:200]}"
        )
    return name


def _archive_keys(entries: list[dict]) -> list[str]:
    """Keras 3 archive key of each layer of one container, in container order."""
    used: dict[str, int] = {}
    keys = []
    for entry in entries:
        name = snake_case(str(entry.get("class_name", "")))
        if name in used:
            used[name] += 1
            name = f"{name}_{used[name]}"
        else:
            used[name] = 0
        keys.append(name)
    return keys


def _ref(item: Any, where: str) -> tuple[str, int, int]:
    if (
        isinstance(item, (list, tuple))
        and len(item) >= 3
        and isinstance(item[0], str)
        and isinstance(item[1], int)
        and isinstance(item[2], int)
    ):
        return item[0], item[1], item[2]
    raise ModelFileError(f"{where}: cannot read tensor reference {item!r}")


def _io_refs(value: Any, where: str) -> tuple[list[str], list[tuple[str, int, int]]]:
    """Names and references of a model's ``input_layers`` / ``output_layers``."""
    if isinstance(value, dict):
        # Keras flattens dict inputs and outputs in sorted key order (tf.nest,
        # optree); that order is the model's input/output order.
        keys = sorted(value)
        return keys, [_ref(value[k], where) for k in keys]
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        value = [value]  # a single tensor, not wrapped in a list
    if not isinstance(value, (list, tuple)):
        raise ModelFileError(f"{where}: cannot read model inputs/outputs {value!r}")
    refs = [_ref(v, where) for v in value]
    return [r[0] for r in refs], refs


def _inbound_refs(inbound: Any, where: str) -> list[tuple[str, int, int]]:
    """Tensor references of one call (one ``inbound_nodes`` entry)."""
    if isinstance(inbound, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        refs: list[tuple[str, int, int]] = []

        def walk(obj: Any, in_kwargs: bool) -> None:
            if isinstance(obj, dict):
                if obj.get("class_name") == "__keras_tensor__":
                    if in_kwargs:
                        raise UnsupportedLayerError(
                            f"{where} is called with a tensor keyword argument, which "
                            "is not supported"
                        )
                    refs.append(_ref(obj.get("config", {}).get("keras_history"), where))
                else:
                    for v in obj.values():
                        walk(v, in_kwargs)
            elif isinstance(obj, (list, tuple)):
                for v in obj:
                    walk(v, in_kwargs)

        walk(inbound.get("args", []), False)
        walk(inbound.get("kwargs", {}), True)
        return refs
    if isinstance(
        inbound, (list, tuple)
    ):  # Keras 2: [[name, node, tensor, kwargs], ...]
        if inbound and isinstance(inbound[0], str):  # one bare reference
            return [_ref(inbound, where)]
        return [_ref(item, where) for item in inbound]
    raise ModelFileError(f"{where}: cannot read inbound node {inbound!r}")


class _Builder:
    def __init__(self, config: dict, source: WeightSource, keras_major: int):
        self.config = config
        self.source = source
        self.keras_major = keras_major
        self.graph = Graph()
        self.weight_cache: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
        self.warned_dtype = False

    # -- models ------------------------------------------------------------

    def build(self) -> Graph:
        if (
            not isinstance(self.config, dict)
            or self.config.get("class_name") not in MODEL_CLASSES
        ):
            cls = (
                self.config.get("class_name") if isinstance(self.config, dict) else None
            )
            raise ModelFileError(
                f"'{self.source.path}': the model config is not a Functional or "
                f"Sequential model (class {cls!r})"
            )
        names, outputs = self._model(self.config, _Scope(), None)
        self.graph.outputs = outputs
        # Two outputs taken from one layer get their tensor index appended.
        seen: dict[str, int] = {}
        for n in names:
            seen[n] = seen.get(n, 0) + 1
        count: dict[str, int] = {}
        out_names = []
        for n in names:
            if seen[n] > 1:
                out_names.append(f"{n}:{count.get(n, 0)}")
                count[n] = count.get(n, 0) + 1
            else:
                out_names.append(n)
        self.graph.output_names = out_names
        return self.graph.finalize()

    def _model(
        self, entry: dict, scope: _Scope, inputs: list[str] | None
    ) -> tuple[list[str], list[str]]:
        """Inline one model; returns its output names and output nodes."""
        if entry.get("class_name") == "Sequential":
            return self._sequential(entry, scope, inputs)
        return self._functional(entry, scope, inputs)

    def _new_input(self, name: str, cfg: dict, where: str) -> str:
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        if not isinstance(shape, (list, tuple)) or len(shape) < 2:
            raise ModelFileError(
                f"'{self.source.path}': {where} has no input shape; save the model "
                "after building it with a fixed input shape"
            )
        if cfg.get("sparse") or cfg.get("ragged"):
            raise UnsupportedLayerError(
                f"{where}: sparse or ragged inputs are not supported"
            )
        node = Node(
            name=name,
            op=ops.Input(tuple(shape[1:])),
            layer=name,
            layer_class="InputLayer",
        )
        return self.graph.add(node)

    def _sequential(
        self, entry: dict, scope: _Scope, inputs: list[str] | None
    ) -> tuple[list[str], list[str]]:
        conf = entry.get("config", {})
        layers = conf if isinstance(conf, list) else conf.get("layers", [])
        model_name = (
            conf.get("name", "sequential") if isinstance(conf, dict) else "sequential"
        )
        where = f"model '{'/'.join(scope.wpath) or model_name}' (Sequential)"
        start = 1 if layers and layers[0].get("class_name") == "InputLayer" else 0
        if inputs is None:
            if start:
                in_cfg = layers[0].get("config", {})
                in_name = in_cfg.get("name", f"{model_name}_input")
            else:
                first = layers[0].get("config", {}) if layers else {}
                in_cfg = dict(first)
                if "batch_input_shape" not in in_cfg and isinstance(conf, dict):
                    in_cfg["batch_input_shape"] = conf.get("build_input_shape")
                in_name = f"{model_name}_input"
            x = self._new_input(in_name, in_cfg, where)
            self.graph.inputs.append(x)
        else:
            if len(inputs) != 1:
                raise ShapeError(f"{where} takes 1 input, got {len(inputs)}")
            x = inputs[0]
        rest = layers[start:]
        if not rest:
            raise ModelFileError(f"'{self.source.path}': {where} has no layers")
        name = None
        for layer, key in zip(rest, _archive_keys(rest)):
            name = _layer_name(layer)
            outs = self._call(layer, 0, [x], scope, key)
            if len(outs) != 1:
                raise ShapeError(f"{where}: layer '{name}' has {len(outs)} outputs")
            x = outs[0]
        return [name], [x]

    def _functional(
        self, entry: dict, scope: _Scope, inputs: list[str] | None
    ) -> tuple[list[str], list[str]]:
        conf = entry.get("config", {})
        model_name = conf.get("name", "model")
        where = f"model '{'/'.join(scope.wpath) or model_name}'"
        layers = conf.get("layers")
        if not isinstance(layers, list):
            raise ModelFileError(
                f"'{self.source.path}': {where} config has no layer list"
            )
        by_name = {}
        keys = {}
        for layer, key in zip(layers, _archive_keys(layers)):
            by_name[_layer_name(layer)] = layer
            keys[_layer_name(layer)] = key
        in_names, in_refs = _io_refs(conf.get("input_layers"), where)
        out_names, out_refs = _io_refs(conf.get("output_layers"), where)
        if inputs is not None and len(inputs) != len(in_refs):
            raise ShapeError(f"{where} takes {len(in_refs)} inputs, got {len(inputs)}")

        input_map: dict[str, str] = {}
        for i, (name, _, _) in enumerate(in_refs):
            if name not in by_name:
                raise ModelFileError(
                    f"'{self.source.path}': {where} has no input layer '{name}'"
                )
            if inputs is None:
                node = self._new_input(
                    name, by_name[name].get("config", {}), f"input '{name}'"
                )
                self.graph.inputs.append(node)
                input_map[name] = node
            else:
                input_map[name] = inputs[i]

        memo: dict[tuple[str, int], list[str]] = {}
        active: set[tuple[str, int]] = set()

        def tensor(ref: tuple[str, int, int], io_ref: bool = False) -> str:
            name, node_index, tensor_index = ref
            if name in input_map:
                return input_map[name]
            if name not in by_name:
                raise ModelFileError(
                    f"'{self.source.path}': {where} refers to unknown layer '{name}'"
                )
            layer = by_name[name]
            if layer.get("class_name") == "InputLayer":
                raise ModelFileError(
                    f"'{self.source.path}': {where} uses input layer '{name}', which "
                    "is not one of its inputs"
                )
            inbound = layer.get("inbound_nodes") or []
            offset = self._first_node_offset(layer, node_index, len(inbound), io_ref)
            call_index = node_index - offset
            if not 0 <= call_index < len(inbound):
                raise ModelFileError(
                    f"'{self.source.path}': {where} refers to call {node_index} of "
                    f"layer '{name}', which the config does not have"
                )
            key = (name, call_index)
            if key not in memo:
                self._check_supported(layer, scope)
                if key in active:
                    raise ModelFileError(
                        f"'{self.source.path}': {where} has a cycle at '{name}'"
                    )
                active.add(key)
                refs = _inbound_refs(inbound[call_index], f"layer '{name}'")
                xs = [tensor(r) for r in refs]
                memo[key] = self._call(layer, call_index, xs, scope, keys[name])
                active.discard(key)
            outs = memo[key]
            if not 0 <= tensor_index < len(outs):
                raise ModelFileError(
                    f"'{self.source.path}': {where} refers to output {tensor_index} of "
                    f"layer '{name}', which has {len(outs)}"
                )
            return outs[tensor_index]

        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 20 * len(layers) + 1000))
        try:
            outputs = [tensor(r, io_ref=True) for r in out_refs]
        finally:
            sys.setrecursionlimit(limit)
        return out_names, outputs

    def _first_node_offset(
        self, layer: dict, node_index: int, n_inbound: int, io_ref: bool
    ) -> int:
        """How far a config's node index is from the call's index in the layer's
        ``inbound_nodes`` list.

        A nested Functional model owns a node 0 made when it was built, which
        the config leaves out. Keras 2 counts it in every reference. Keras 3
        counts it only in a model's ``output_layers``/``input_layers``, not in
        ``inbound_nodes`` (its loader subtracts 1 there, and only for Functional).
        """
        cls = layer.get("class_name")
        if cls not in MODEL_CLASSES:
            return 0
        if self.keras_major >= 3:
            return 1 if io_ref and cls != "Sequential" else 0
        if cls == "Sequential":
            sub = layer.get("config", {})
            sub = sub if isinstance(sub, list) else sub.get("layers", [])
            built = bool(sub) and sub[0].get("class_name") == "InputLayer"
            return 1 if built or node_index >= n_inbound else 0
        return 1

    # -- layers ------------------------------------------------------------

    def _check_dtype_policy(self, layer: dict, where: str) -> None:
        policy = (layer.get("config") or {}).get("dtype")
        if isinstance(policy, dict):
            policy = (policy.get("config") or {}).get("name")
        if policy not in (None, "float32") and not self.warned_dtype:
            self.warned_dtype = True
            warnings.warn(
                f"{where} was saved with dtype policy {policy!r}; ismkernel computes "
                "in float32 (or float64), so results differ from Keras's by that "
                "precision",
                IsmkernelWarning,
                stacklevel=4,
            )

    def _check_supported(self, layer: dict, scope: _Scope) -> None:
        cls = layer.get("class_name")
        shipped = _ships_with_keras(layer)
        if cls in MODEL_CLASSES or (
            shipped and (cls in IDENTITY_LAYERS or cls in HANDLERS)
        ):
            return
        where = f"layer '{'/'.join(scope.wpath + (_layer_name(layer),))}' ({cls})"
        if cls == "Lambda":
            raise UnsupportedLayerError(
                f"{where} carries Python code; ismkernel never runs code from model "
                "files. Replace it with a supported layer or split the model there."
            )
        if cls in ("TFOpLambda", "SlicingOpLambda"):
            raise UnsupportedLayerError(
                f"{where} is a raw TensorFlow op recorded by Keras 2, which ismkernel "
                "does not support; use the equivalent Keras layer (e.g. Add, "
                f"Multiply, Cropping1D). Supported: {', '.join(supported_layers())}"
            )
        supported = ", ".join(supported_layers())
        if shipped:
            raise UnsupportedLayerError(
                f"{where} is not a supported layer: ismkernel does not read this "
                f"Keras layer class; supported: {supported}"
            )
        raise UnsupportedLayerError(
            f"{where} is not a supported layer: it is a custom layer, and custom "
            "layers carry Python code, which ismkernel will not run. Export the "
            "model to ONNX where that code is importable and pass ismkernel the "
            ".onnx file instead: Keras 3, model.export('model.onnx', "
            "format='onnx'); Keras 2, pip install tf2onnx, then "
            "tf2onnx.convert.from_keras(keras.models.load_model('model.h5', "
            "custom_objects={...}), output_path='model.onnx'); PyTorch, "
            "torch.onnx.export(model, (x,), 'model.onnx'). Keras layers "
            f"supported: {supported}"
        )

    def _call(
        self, layer: dict, call_index: int, xs: list[str], scope: _Scope, key: str
    ) -> list[str]:
        cls = layer.get("class_name")
        name = _layer_name(layer)
        suffix = f"@{call_index}" if call_index else ""
        wpath = scope.wpath + (name,)
        kpath = scope.kpath + (key,)
        where = f"layer '{'/'.join(wpath)}' ({cls})"
        if cls in MODEL_CLASSES:
            child = _Scope(f"{scope.prefix}{name}{suffix}/", wpath, kpath)
            return self._model(layer, child, xs)[1]
        self._check_supported(layer, scope)
        self._check_dtype_policy(layer, where)
        if cls in IDENTITY_LAYERS:
            if len(xs) != 1:
                raise ShapeError(f"{where} takes 1 input, got {len(xs)}")
            return xs
        handler = HANDLERS[cls]
        call = LayerCall(
            builder=self,
            layer=name,
            layer_class=cls,
            cfg=layer.get("config", {}) or {},
            node_base=f"{scope.prefix}{name}{suffix}",
            wpath=wpath,
            kpath=kpath,
            keras_major=self.keras_major,
        )
        return handler(call, xs)


def _ships_with_keras(layer: dict) -> bool:
    """Whether a layer's class is one of Keras's own, not a custom one (which
    may even share a Keras class's name).

    Keras 3 records the defining module (``keras.layers`` for its own
    classes, ``None`` or the user's module for custom ones) and registers
    custom classes as ``package>Name``; Keras 2 records only the class name.
    """
    cls = str(layer.get("class_name"))
    registered = layer.get("registered_name")
    if ">" in cls or (registered is not None and ">" in str(registered)):
        return False
    if "module" in layer:
        module = str(layer.get("module"))
        return module.split(".")[0] in ("keras", "tf_keras", "tensorflow")
    return cls in KERAS_LAYER_CLASSES or cls in HANDLERS or cls in IDENTITY_LAYERS


def build_graph(config: dict, source: WeightSource, keras_major: int) -> Graph:
    """The IR graph of a Keras model ``config`` with weights from ``source``."""
    return _Builder(config, source, keras_major).build()
