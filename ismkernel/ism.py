"""The public :func:`ism` driver."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ismkernel import config
from ismkernel.backends import reference, resolve_backend
from ismkernel.inputs import (
    check_alternatives,
    check_dtype,
    check_positions,
    check_positive_int,
    seq_input_index,
)
from ismkernel.model import Model

__all__ = ["ism", "IsmResult"]


@dataclass
class IsmResult:
    """Results of in-silico saturation mutagenesis.

    Attributes
    ----------
    reference : list of ndarray
        Per model output, the unmutated predictions, ``(n_seqs, *out_shape)``.
    outputs : list of ndarray
        Per model output, ``(n_seqs, n_positions, n_alts, *out_shape)``:
        ``outputs[k][n, p, a]`` is output ``k`` for sequence ``n`` with row
        ``positions[p]`` of the mutated input set to ``alternatives[a]``.
    positions : ndarray of int64, shape (n_positions,)
    alternatives : ndarray, shape (n_alts, n_channels)
    output_names : list of str
    seq_input : str
        Name of the mutated input.
    backend : str
        Backend that computed the result.
    stats : dict
        What the run did. The ``cpu`` backend reports ``seconds`` (per node,
        plus the reference pass), ``n_mutants`` computed, ``n_copied``
        (rows already equal to the alternative), ``n_early_exit`` (mutants
        whose change vanished exactly), ``chunk_size``, ``block_size``,
        ``flops_naive`` and ``flops_plan`` (per mutant).
    """

    reference: list[np.ndarray]
    outputs: list[np.ndarray]
    positions: np.ndarray
    alternatives: np.ndarray
    output_names: list[str] = field(default_factory=list)
    seq_input: str = ""
    backend: str = ""
    stats: dict = field(default_factory=dict)

    def delta(self) -> list[np.ndarray]:
        """Per output, mutant minus reference, ``(n_seqs, n_positions, n_alts, *out_shape)``."""
        return [o - r[:, None, None] for o, r in zip(self.outputs, self.reference)]


def ism(
    model: Model,
    x: Any,
    *,
    alternatives: Any = None,
    positions: Any = None,
    seq_input: str | int | None = None,
    backend: str = "auto",
    batch_size: int | None = None,
    progress: bool = False,
    dtype: str = config.DEFAULT_DTYPE,
    memory_budget: int | None = None,
) -> IsmResult:
    """In-silico saturation mutagenesis of ``model`` on sequences ``x``.

    Parameters
    ----------
    model : Model
    x : ndarray of float32, shape (n_seqs, seq_len, n_channels), or list / dict
        The sequences (one-hot or not), in the model's own layout: ONNX models
        from PyTorch take ``(n_seqs, n_channels, seq_len)``. For a model with several inputs, a list
        in model input order or a dict by input name; inputs other than the
        mutated one stay fixed per sequence.
    alternatives : ndarray, shape (n_alts, n_channels), optional
        Rows to put at each position; default ``identity(n_channels)``.
    positions : None, slice or 1-D int array, optional
        Positions to mutate; default all.
    seq_input : str or int, optional
        The input to mutate; default the one input with 4 channels, else the
        first.
    backend : str
        ``"cpu"`` (incremental), ``"reference"`` (naive, dense NumPy) or
        ``"auto"`` (``"cpu"``).
    batch_size : int, optional
        Mutants per forward pass (``reference``) or per chunk (``cpu``);
        default from the memory budget.
    progress : bool
        Show a progress bar (tqdm).
    dtype : {"float32", "float64"}
    memory_budget : int, optional
        Bytes the ``cpu`` backend may hold at once for reference activations
        and tiles (default ``config.CPU_MEMORY_BYTES``).

    Returns
    -------
    IsmResult
        Where a row already equals an alternative, the reference is copied.
    """
    name = resolve_backend(backend)
    dt = check_dtype(dtype)
    specs = model.graph.input_specs  # the IR's (seq_len, n_channels) layout
    index = seq_input_index(specs, seq_input)
    feeds = model.feeds(x, dt)
    seq = feeds[index]
    pos = check_positions(positions, seq.shape[1])
    alts = check_alternatives(alternatives, seq.shape[2], dt)
    batch = check_positive_int(batch_size, "batch_size")
    memory_budget = check_positive_int(memory_budget, "memory_budget")

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=seq.shape[0] * len(pos) * len(alts), unit="mutant", desc="ISM")
    stats: dict = {}
    try:
        if name == "cpu":
            from ismkernel.backends.cpu import cpu_ism

            ref, outs, run = cpu_ism(
                model.graph,
                feeds,
                index,
                pos,
                alts,
                memory_budget=memory_budget,
                chunk_size=batch,
                progress=bar.update if bar else None,
            )
            stats = dict(
                seconds=run.seconds,
                n_mutants=run.n_mutants,
                n_copied=run.n_copied,
                n_early_exit=run.n_early_exit,
                chunk_size=run.chunk_size,
                block_size=run.block_size,
                flops_naive=run.plan.flops_naive,
                flops_plan=run.plan.flops_plan,
            )
        else:
            batch = batch or reference.default_batch_size(model.graph, dt)
            ref, outs = reference.naive_ism(
                model.graph, feeds, index, pos, alts, batch, bar.update if bar else None
            )
    finally:
        if bar is not None:
            bar.close()
    return IsmResult(
        reference=model.from_ir(ref, 1),
        outputs=model.from_ir(outs, 3),
        positions=pos,
        alternatives=alts,
        output_names=model.output_names,
        seq_input=specs[index].name,
        backend=name,
        stats=stats,
    )
