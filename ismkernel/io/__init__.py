"""Model importers and file formats."""

from __future__ import annotations

import os

from ismkernel.errors import ModelFileError
from ismkernel.io.keras_h5 import read_keras_h5
from ismkernel.io.keras_v3 import read_keras_v3
from ismkernel.io.onnx import looks_like_onnx, read_onnx

__all__ = ["read_graph"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"


def read_graph(path: str | os.PathLike, length: int | None = None):
    """Read a model file into an IR graph, choosing the reader by content.
    ``length`` fixes a sequence length an ONNX file leaves free.

    Returns
    -------
    graph : Graph
    info : dict
        ``format``, ``producer`` and, for ONNX, ``input_perms`` and
        ``output_perms``.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ModelFileError(
            f"'{path}' is a directory (a TensorFlow SavedModel?); ismkernel reads "
            "Keras .h5 and .keras files and ONNX files"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise ModelFileError(f"model file '{path}' does not exist") from None
    except OSError as err:
        raise ModelFileError(f"cannot open model file '{path}': {err}") from None
    if head.startswith(_HDF5_SIGNATURE):
        return read_keras_h5(path)
    if head.startswith(_ZIP_SIGNATURE):
        return read_keras_v3(path)
    if looks_like_onnx(head):
        return read_onnx(path, length)
    raise ModelFileError(
        f"'{path}' is neither an HDF5 file, a .keras archive nor an ONNX file "
        f"(first bytes {head!r}); ismkernel reads Keras .h5 and .keras model files "
        "and ONNX files"
    )
