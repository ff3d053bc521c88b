"""Shape inference and the padding rules every backend obeys.

The padding arithmetic is the specification: it follows TensorFlow's ``SAME``
rule (the odd extra padded column goes on the right) and Keras's ``causal``
rule (all padding on the left). Backends call these functions; they never
re-derive padding themselves.
"""

from __future__ import annotations

import math

from ismkernel.errors import ShapeError
from ismkernel.ir import nodes as ops

__all__ = ["conv_padding", "pool_padding", "infer_shape"]

Shape = tuple[int | None, ...]


def conv_padding(
    seq_len: int,
    kernel_size: int,
    stride: int,
    dilation: int,
    padding: str | tuple[int, int],
) -> tuple[int, int, int]:
    """Padding and output length of a 1-D convolution.

    ``padding`` is ``"valid"``, ``"same"``, ``"causal"`` or ``(left, right)``.

    Returns
    -------
    (left, right, out_len) : tuple of int
        Zero rows added before and after the input, and the output length.
    """
    span = (kernel_size - 1) * dilation + 1
    if isinstance(padding, tuple):
        left, right = padding
    elif padding == "valid":
        left = right = 0
    elif padding == "causal":
        left, right = span - 1, 0
    elif padding == "same":
        out_len = -(-seq_len // stride)
        total = max((out_len - 1) * stride + span - seq_len, 0)
        left = total // 2
        right = total - left
    else:  # validated at import
        raise ValueError(padding)
    padded = seq_len + left + right
    out_len = (padded - span) // stride + 1 if padded >= span else 0
    return left, right, out_len


def pool_padding(
    seq_len: int, pool_size: int, stride: int, padding: str | tuple[int, int]
) -> tuple[int, int, int]:
    """Padding and output length of a 1-D pooling window (TensorFlow rules)."""
    return conv_padding(seq_len, pool_size, stride, 1, padding)


def _length(dim: int | None, fn) -> int | None:
    return None if dim is None else fn(dim)


def _need_rank(node: ops.Node, shape: Shape, rank: int, what: str) -> None:
    if len(shape) != rank:
        raise ShapeError(
            f"{node.where()} expects a {what} input of rank {rank} per sample, "
            f"got shape {shape}"
        )


def infer_shape(node: ops.Node, in_shapes: list[Shape]) -> Shape:
    """Per-sample output shape of ``node`` given its inputs' shapes.

    Raises
    ------
    ShapeError
        Naming the layer, when the inputs do not fit the op or its weights.
    """
    op = node.op
    where = node.where()
    if isinstance(op, ops.Input):
        return tuple(op.shape)
    x = in_shapes[0] if in_shapes else ()

    if isinstance(op, ops.Conv1D):
        _need_rank(node, x, 2, "(seq_len, n_channels)")
        n_channels = x[1]
        kernel = node.weights["kernel"]
        expected = (op.kernel_size, n_channels // op.groups, op.n_filters)
        if n_channels % op.groups:
            raise ShapeError(
                f"{where}: {n_channels} input channels do not split into "
                f"{op.groups} groups"
            )
        if kernel.shape != expected:
            raise ShapeError(
                f"{where}: kernel has shape {kernel.shape} but an input of "
                f"{n_channels} channels needs {expected}"
            )
        length = _length(
            x[0],
            lambda n: conv_padding(
                n, op.kernel_size, op.stride, op.dilation, op.padding
            )[2],
        )
        if length == 0:
            raise ShapeError(
                f"{where}: input length {x[0]} is shorter than the kernel span "
                f"{(op.kernel_size - 1) * op.dilation + 1}"
            )
        return (length, op.n_filters)

    if isinstance(op, ops.Pool1D):
        _need_rank(node, x, 2, "(seq_len, n_channels)")
        if isinstance(op.padding, tuple):
            _check_pool_pads(node, op, x[0])
        length = _length(
            x[0], lambda n: pool_padding(n, op.pool_size, op.stride, op.padding)[2]
        )
        if length == 0:
            raise ShapeError(
                f"{where}: input length {x[0]} is shorter than pool size {op.pool_size}"
            )
        return (length, x[1])

    if isinstance(op, ops.Crop1D):
        _need_rank(node, x, 2, "(seq_len, n_channels)")
        length = _length(x[0], lambda n: n - op.start - op.end)
        if length is not None and length <= 0:
            raise ShapeError(
                f"{where}: cropping ({op.start}, {op.end}) leaves nothing of "
                f"length {x[0]}"
            )
        return (length, x[1])

    if isinstance(op, ops.ZeroPad1D):
        _need_rank(node, x, 2, "(seq_len, n_channels)")
        return (_length(x[0], lambda n: n + op.left + op.right), x[1])

    if isinstance(op, ops.UpSample1D):
        _need_rank(node, x, 2, "(seq_len, n_channels)")
        return (_length(x[0], lambda n: n * op.size), x[1])

    if isinstance(op, ops.Activation):
        if op.fn in ("softmax", "log_softmax") and not -len(x) <= op.axis < len(x):
            raise ShapeError(f"{where}: axis {op.axis} out of range for shape {x}")
        return tuple(x)

    if isinstance(op, (ops.PReLU, ops.ChannelAffine)):
        for name, w in node.weights.items():
            try:
                fits = _broadcast(w.shape, x) == tuple(x)
            except ShapeError:
                fits = False
            if not fits:
                raise ShapeError(
                    f"{where}: weight '{name}' of shape {w.shape} does not fit an "
                    f"input of shape {x}"
                )
        return tuple(x)

    if isinstance(op, ops.LayerNorm):
        for name, w in node.weights.items():
            if w.shape != (x[-1],):
                raise ShapeError(
                    f"{where}: weight '{name}' has shape {w.shape} but an input of "
                    f"shape {x} needs {(x[-1],)}"
                )
        return tuple(x)

    if isinstance(op, ops.Merge):
        binary = op.mode in ("subtract", "divide")
        if len(in_shapes) < 2 or (binary and len(in_shapes) != 2):
            n = "exactly 2" if binary else "at least 2"
            raise ShapeError(f"{where} needs {n} inputs, got {len(in_shapes)}")
        out = in_shapes[0]
        for s in in_shapes[1:]:
            try:
                out = _broadcast(out, s)
            except ShapeError:
                raise ShapeError(
                    f"{where}: inputs of shapes {in_shapes} cannot be merged"
                ) from None
        return out

    if isinstance(op, ops.Concatenate):
        rank = len(in_shapes[0])
        if any(len(s) != rank for s in in_shapes) or not 0 <= op.axis < rank:
            raise ShapeError(
                f"{where}: cannot concatenate shapes {in_shapes} on axis {op.axis}"
            )
        for s in in_shapes[1:]:
            for i in range(rank):
                if i != op.axis and not _same(s[i], in_shapes[0][i]):
                    raise ShapeError(
                        f"{where}: cannot concatenate shapes {in_shapes} on "
                        f"axis {op.axis}"
                    )
        dims = [s[op.axis] for s in in_shapes]
        total = None if None in dims else sum(dims)
        out = list(in_shapes[0])
        out[op.axis] = total
        return tuple(out)

    if isinstance(op, ops.Flatten):
        if None in x:
            raise ShapeError(
                f"{where} needs a fixed input shape, got {x}; give the model "
                "input a fixed length"
            )
        return (math.prod(x),)

    if isinstance(op, ops.Reshape):
        if None in x:
            raise ShapeError(f"{where} needs a fixed input shape, got {x}")
        if math.prod(x) != math.prod(op.target_shape):
            raise ShapeError(
                f"{where}: cannot reshape {x} ({math.prod(x)} values) to "
                f"{op.target_shape}"
            )
        return tuple(op.target_shape)

    if isinstance(op, ops.Dense):
        if not x:
            raise ShapeError(f"{where} needs an input of rank >= 1, got a scalar")
        kernel = node.weights["kernel"]
        if kernel.shape != (x[-1], op.units):
            raise ShapeError(
                f"{where}: kernel has shape {kernel.shape} but an input with last "
                f"axis {x[-1]} needs {(x[-1], op.units)}"
            )
        return tuple(x[:-1]) + (op.units,)

    if isinstance(op, ops.ChannelSlice):
        if not x or x[-1] is None or not 0 <= op.start < op.end <= x[-1]:
            raise ShapeError(
                f"{where}: channels [{op.start}, {op.end}) do not fit an input of "
                f"shape {x}"
            )
        return tuple(x[:-1]) + (op.end - op.start,)

    if isinstance(op, ops.GlobalPool1D):
        _need_rank(node, x, 2, "(seq_len, n_channels)")
        keep = 1 - op.axis
        if op.keepdims:
            out = [1, 1]
            out[keep] = x[keep]
            return tuple(out)
        return (x[keep],)

    raise ShapeError(f"{where}: no shape rule for op {op.kind}")


def _check_pool_pads(node: ops.Node, op: ops.Pool1D, length: int | None) -> None:
    """Explicit pooling pads must leave an input row in every window (as
    PyTorch's do): a window of padding alone has no maximum or mean."""
    left, right = op.padding
    bad = left >= op.pool_size or right >= op.pool_size
    if not bad and length is not None:
        out_len = pool_padding(length, op.pool_size, op.stride, op.padding)[2]
        bad = out_len > 0 and (out_len - 1) * op.stride >= left + length
    if bad:
        raise ShapeError(
            f"{node.where()}: padding {op.padding} leaves a pooling window of "
            f"size {op.pool_size} (stride {op.stride}) with no input row"
        )


def _same(a: int | None, b: int | None) -> bool:
    return a is None or b is None or a == b


def _broadcast(a: Shape, b: Shape) -> Shape:
    """NumPy broadcasting of per-sample shapes; ``None`` matches anything."""
    if len(a) != len(b):
        raise ShapeError(f"ranks differ: {a} and {b}")
    out = []
    for i, j in zip(a, b):
        if i == j or j == 1:
            out.append(i)
        elif i == 1:
            out.append(j)
        elif i is None or j is None:
            out.append(i if j is None else j)
        else:
            raise ShapeError(f"shapes {a} and {b} do not broadcast")
    return tuple(out)
