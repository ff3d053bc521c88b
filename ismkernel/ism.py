"""The public :func:`ism` driver."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ismkernel import config
from ismkernel.backends import get_backend, resolve_backend
from ismkernel.errors import InputError
from ismkernel.inputs import (
    check_alternatives,
    check_dtype,
    check_memory_budget,
    check_positions,
    check_positive_int,
    output_indices,
    seq_input_index,
)
from ismkernel.model import Model, _from_ir
from ismkernel.plan import Edits
from ismkernel.plan.intervals import EMPTY, hull
from ismkernel.reduce import (
    REDUCERS,
    OutputAxes,
    OutputSink,
    ScoreSink,
    parse_range,
    reduce_scores,
    select_output,
)

__all__ = ["ism", "IsmResult", "IsmRun", "EditRun"]


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
    scores : list of ndarray or None
        Per model output, the reducer ``ism(reduce=...)`` asked for (see
        :meth:`reduce`).
    stats : dict
        What the run did. The ``cpu`` backend reports ``seconds`` (per node,
        plus the reference pass), ``n_mutants`` computed, ``n_copied``
        (rows already equal to the alternative), ``n_early_exit`` (mutants
        whose change vanished exactly), ``chunk_size``, ``block_size``,
        ``flops_naive`` and ``flops_plan`` (per mutant).
    """

    reference: list[np.ndarray]
    outputs: list[np.ndarray] | None
    positions: np.ndarray
    alternatives: np.ndarray
    output_names: list[str] = field(default_factory=list)
    seq_input: str = ""
    backend: str = ""
    stats: dict = field(default_factory=dict)
    axes: list[OutputAxes] = field(default_factory=list)
    scores: list[np.ndarray] | None = None
    #: Per output, the reference on the scores' tasks and range, where the
    #: backend reduced as it went.
    score_reference: list[np.ndarray] | None = None

    def delta(self) -> list[np.ndarray]:
        """Per output, mutant minus reference, ``(n_seqs, n_positions, n_alts, *out_shape)``."""
        return [o - r[:, None, None] for o, r in zip(self.outputs, self.reference)]

    def output_index(self, outputs: Any = None) -> list[int]:
        """Indices of ``outputs`` (names or indices; None: all)."""
        return output_indices(self.output_names, outputs)

    def selected(
        self, k: int, tasks: Any = None, sum_over: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Output ``k``'s mutants and reference restricted to ``tasks`` and
        summed over ``sum_over`` (``"START:END"`` of its length axis)."""
        window = parse_range(sum_over, "sum_over")
        mut = select_output(self.outputs[k], self.axes[k], 3, tasks, window)
        ref = select_output(self.reference[k], self.axes[k], 1, tasks, window)
        return mut, ref

    def reduce(
        self,
        kind: str = "delta",
        *,
        outputs: Any = None,
        tasks: Any = None,
        sum_over: Any = None,
    ) -> list[np.ndarray]:
        """Per chosen output, the reducer ``kind`` (``raw``, ``delta``,
        ``log2fc``, ``mean-centred`` or ``l2``; see :mod:`ismkernel.reduce`)
        of its channels ``tasks``, summed over ``sum_over`` of its length."""
        out = []
        for k in self.output_index(outputs):
            mut, ref = self.selected(k, tasks, sum_over)
            out.append(reduce_scores(mut, ref, kind, self.output_names[k]))
        return out


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
    memory_budget: int | str | None = None,
    threads: int | None = None,
    reduce: str | None = None,
    client: Any = None,
    output_rows: dict | None = None,
    early_exit: bool | None = None,
    precision: str = "float32",
) -> IsmResult:
    """In-silico saturation mutagenesis of ``model`` on sequences ``x``.

    Parameters
    ----------
    model : Model
    x : ndarray of float32, shape (n_seqs, seq_len, n_channels), or list / dict
        The sequences (one-hot or not), in the model's own layout: ONNX models
        from PyTorch take ``(n_seqs, n_channels, seq_len)``. For a model with several inputs, a list
        in model input order or a dict by input name; inputs other than the
        mutated one stay fixed per sequence. NumPy arrays give NumPy results;
        with ``backend="cuda"``, CuPy arrays give CuPy results on their
        device.
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
    progress : bool or callable
        Show a progress bar (tqdm); a callable is called with the number of
        mutants finished since its last call instead.
    dtype : {"float32", "float64"}
    memory_budget : int or str, optional
        Bytes the backend may hold at once for reference activations and
        tiles: an integer, or text such as ``"512M"`` or ``"2G"`` (default
        ``config.CPU_MEMORY_BYTES``).
    threads : int, optional
        Threads of the ``cpu`` backend, each computing its own chunks with
        single-threaded BLAS (default ``NUMBA_NUM_THREADS``, which is all the
        cores unless set).
    reduce : str, optional
        Also compute ``result.scores`` with this reducer (``raw``, ``delta``,
        ``log2fc``, ``mean-centred``, ``l2``) on the backend's arrays.
    output_rows : dict, optional
        ``{output name or index: (start, end)}``: only these rows of a profile
        output (its length axis) are wanted, e.g. the range a score sums
        over; ``(0, 0)`` for an output not wanted at all. The planner then
        skips the rest, and the mutants' values there are NaN (the
        references stay complete).
    client : dask.distributed.Client, optional
        Score chunks of the sequences on the cluster's workers (each gets
        the model once); results are gathered in order and equal an
        in-process run's.
    early_exit : bool, optional
        Whether mutants whose change vanished exactly stop early (default:
        the backend's choice; the results are the same either way).
    precision : {"float32", "tf32"}
        ``"tf32"`` lets the cuda backend's GEMMs round float32 inputs to TF32
        (faster on recent GPUs, not exact to float32); recorded in
        ``result.stats``.

    Returns
    -------
    IsmResult
        Where a row already equals an alternative, the reference is copied.
    """
    run = IsmRun(
        model,
        alternatives=alternatives,
        positions=positions,
        seq_input=seq_input,
        backend=backend,
        batch_size=batch_size,
        dtype=dtype,
        memory_budget=memory_budget,
        threads=threads,
        output_rows=output_rows,
        early_exit=early_exit,
        precision=precision,
    )
    if reduce is not None and reduce not in REDUCERS:
        raise InputError(f"reduce must be one of {REDUCERS}, got {reduce!r}")
    if client is not None:
        model = model.specialize(x)
        return _ism_on_cluster(
            client,
            model,
            model.feeds(x, run.dtype),
            dict(
                alternatives=alternatives,
                positions=positions,
                seq_input=seq_input,
                backend=backend,
                batch_size=batch_size,
                dtype=dtype,
                memory_budget=memory_budget,
                threads=threads,
                reduce=reduce,
                output_rows=output_rows,
                early_exit=early_exit,
            ),
        )
    result = run(x, progress=progress)
    if reduce is not None:
        result.scores = result.reduce(reduce)
    return result


class EditRun:
    """Edits of one model's mutated input with fixed options, over any number
    of batches of sequences: the plan is built once per input shape (in
    practice once per job) and reused, with its device constants.

    Subclasses say which edits (:meth:`edits`); :class:`IsmRun` makes point
    mutations. Options are those of :func:`ism`.
    """

    #: The progress bar's label.
    label = "edits"

    def __init__(
        self,
        model: Model,
        *,
        seq_input: str | int | None = None,
        backend: str = "auto",
        batch_size: int | None = None,
        dtype: str = config.DEFAULT_DTYPE,
        memory_budget: int | str | None = None,
        threads: int | None = None,
        output_rows: dict | None = None,
        early_exit: bool | None = None,
        precision: str = "float32",
    ):
        self.backend_name = resolve_backend(backend)
        self.backend = get_backend(self.backend_name)
        self.dtype = check_dtype(dtype)
        self.model = model
        self.seq_input = seq_input
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.memory_budget = check_memory_budget(memory_budget, "memory_budget")
        self.threads = check_positive_int(threads, "threads")
        self.output_rows = output_rows
        self.early_exit = None if early_exit is None else bool(early_exit)
        if precision not in ("float32", "tf32"):
            raise InputError(
                f"precision must be 'float32' or 'tf32', got {precision!r}"
            )
        if precision != "float32" and not self.backend_name.startswith("cuda"):
            raise InputError(
                f"precision={precision!r} is a GPU GEMM mode: it needs "
                f"backend='cuda', not {self.backend_name!r}"
            )
        self.precision = precision
        self._plans: dict[tuple, tuple] = {}

    def edits(self, seq: np.ndarray) -> Edits:
        """The edits for mutated-input sequences ``seq`` ``(n_seqs, seq_len,
        n_channels)``, validated; called once per input shape."""
        raise NotImplementedError

    def plan_for(self, x: Any):
        """``(model, feeds, index, plan, rows)`` for sequences ``x``: the plan
        is built the first time their input shapes are seen."""
        model = self.model.specialize(x)  # an ONNX graph waiting for its length
        specs = model.graph.input_specs  # the IR's (seq_len, n_channels) layout
        index = seq_input_index(specs, self.seq_input)
        feeds = model.feeds(x, self.dtype, device=self.backend_name == "cuda")
        key = tuple(f.shape[1:] for f in feeds) + (id(model),)
        if key not in self._plans:
            edits = self.edits(feeds[index])
            rows = _output_rows(model, self.output_rows)
            graph = model.graph
            plan = self.backend.plan(
                graph,
                graph.inputs[index],
                {name: f.shape[1:] for name, f in zip(graph.inputs, feeds)},
                edits.starts,
                itemsize=self.dtype.itemsize,
                output_rows=_node_rows(model, rows),
                edits=edits,
            )
            self._plans[key] = (model, index, plan, rows)
        model, index, plan, rows = self._plans[key]
        return model, feeds, index, plan, rows

    def score_sink(self, model, rows, reduce, tasks, sum_over, picks=None) -> ScoreSink:
        """A sink reducing ``model``'s outputs (``picks``: some of them) as
        chunks finish."""
        perms = model.output_perms
        return ScoreSink(
            reduce,
            model.output_axes,
            lambda k, a, lead: _from_ir(a, perms[k], lead),
            tasks=tasks,
            sum_over=parse_range(sum_over, "sum_over"),
            rows=rows,
            picks=picks,
        )

    def __call__(
        self,
        x: Any,
        *,
        progress: Any = False,
        reduce: str | None = None,
        tasks: Any = None,
        sum_over: Any = None,
        keep_outputs: bool = True,
        skip: Any = None,
        values: Any = None,
    ) -> IsmResult:
        """Every edit of ``x``. With ``keep_outputs=False``, ``reduce`` is
        computed by the backend as chunks finish (on ``tasks``, summed over
        ``sum_over``) and ``outputs`` is None; otherwise every output is kept
        and ``reduce`` is computed from them. ``skip``: ``(n_seqs, n_sites,
        n_variants)`` mutants not computed (their outputs are left unset);
        ``values``: the rows the edits write for these sequences, in place of
        the plan's (see :func:`ismkernel.backends.engine.walk`)."""
        model, feeds, index, plan, rows = self.plan_for(x)
        if reduce is not None and reduce not in REDUCERS:
            raise InputError(f"reduce must be one of {REDUCERS}, got {reduce!r}")
        if keep_outputs:
            sink = OutputSink(rows)
        else:
            if reduce is None:
                raise InputError("keep_outputs=False needs a reducer (reduce=...)")
            sink = self.score_sink(model, rows, reduce, tasks, sum_over)
        run = self.run_plan(plan, feeds, sink, progress, skip=skip, values=values)
        specs = model.graph.input_specs
        if keep_outputs:
            reference = model.from_ir(sink.reference, 1)
            outputs = model.from_ir(sink.outputs, 3)
        else:
            reference, outputs = model.from_ir(sink.full_reference, 1), None
        result = IsmResult(
            reference=reference,
            outputs=outputs,
            positions=plan.positions,
            alternatives=plan.alternatives,
            output_names=model.output_names,
            seq_input=specs[index].name,
            backend=self.backend_name,
            stats=run,
            axes=model.output_axes,
        )
        if not keep_outputs:
            result.scores = sink.scores
            result.score_reference = sink.reference
        return result

    def run_plan(
        self,
        plan,
        feeds,
        sink,
        progress: Any = False,
        state: Any = None,
        skip: Any = None,
        values: Any = None,
    ) -> dict:
        """Run ``plan`` on ``feeds`` into ``sink`` with a progress bar (or
        callable); returns the run's stats. ``state``: reference activations
        kept from an earlier pass (incremental backends); ``skip``: mutants
        not to compute."""
        bar = None
        update = progress if callable(progress) else None
        seq = feeds[plan.graph.inputs.index(plan.seq_input)]
        if progress is True:
            from tqdm.auto import tqdm

            total = seq.shape[0] * plan.edits.n_sites * plan.edits.n_variants
            bar = tqdm(total=total, unit="mutant", desc=self.label)
            update = bar.update
        try:
            run = self.backend.run(
                plan,
                feeds,
                sink,
                batch_size=self.batch_size,
                memory_budget=self.memory_budget,
                threads=self.threads,
                progress=update,
                early_exit=self.early_exit,
                **({} if state is None else {"state": state}),
                **({} if skip is None else {"skip": skip}),
                **({} if values is None else {"values": values}),
                **(
                    {} if self.precision == "float32" else {"precision": self.precision}
                ),
            )
        finally:
            if bar is not None:
                bar.close()
        return run.as_dict() if self.backend_name != "reference" else {}


class IsmRun(EditRun):
    """ISM of one model with fixed options, over any number of batches of
    sequences (see :class:`EditRun`); parameters are those of :func:`ism`.
    Calling the run on sequences ``x`` returns an :class:`IsmResult`; with
    ``keep_outputs=False`` and a ``reduce``, only scores are kept, reduced
    by the backend as it goes."""

    label = "ISM"

    def __init__(
        self,
        model: Model,
        *,
        alternatives: Any = None,
        positions: Any = None,
        **options,
    ):
        super().__init__(model, **options)
        self.alternatives = alternatives
        self.positions = positions

    def edits(self, seq: np.ndarray) -> Edits:
        pos = check_positions(self.positions, seq.shape[1])
        alts = check_alternatives(self.alternatives, seq.shape[2], self.dtype)
        return Edits.point(pos, alts)


def _ism_chunk(model: Model, feeds: list[np.ndarray], kwargs: dict) -> IsmResult:
    """ISM of IR-layout ``feeds`` on a worker."""
    xs = [_from_ir(f, p, 1) for f, p in zip(feeds, model.input_perms)]
    return ism(model, xs, **kwargs)


def _ism_on_cluster(client: Any, model: Model, feeds: list, kwargs: dict) -> IsmResult:
    from ismkernel.distributed import map_ordered

    n = feeds[0].shape[0]
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    size = max(1, -(-n // (4 * n_workers)))
    chunks = ([f[i : i + size] for f in feeds] for i in range(0, n, size))
    parts = list(map_ordered(client, _ism_chunk, model, chunks, kwargs))
    first = parts[0]

    def cat(get):
        return [np.concatenate(a, axis=0) for a in zip(*(get(p) for p in parts))]

    result = IsmResult(
        reference=cat(lambda p: p.reference),
        outputs=cat(lambda p: p.outputs),
        positions=first.positions,
        alternatives=first.alternatives,
        output_names=first.output_names,
        seq_input=first.seq_input,
        backend=first.backend,
        stats={"n_chunks": len(parts), "n_workers": n_workers},
        axes=first.axes,
    )
    if first.scores is not None:
        result.scores = cat(lambda p: p.scores)
    return result


def _output_rows(model: Model, output_rows: dict | None) -> dict[int, tuple[int, int]]:
    """``output_rows`` by output index, checked against the IR shapes."""
    if not output_rows:
        return {}
    names = model.output_names
    out: dict[int, tuple[int, int]] = {}
    for key, value in output_rows.items():
        (k,) = output_indices(names, key, "output_rows key")
        shape = model.graph.output_specs[k].shape
        if len(shape) != 2:
            raise InputError(
                f"output_rows: output {names[k]!r} of shape {shape} has no length axis"
            )
        start, end = (
            parse_range(tuple(value), "output_rows") if value != (0, 0) else (0, 0)
        )
        end = shape[0] if end is None else end
        if end > shape[0]:
            raise InputError(
                f"output_rows {value} is out of range for output {names[k]!r} of "
                f"length {shape[0]}"
            )
        out[k] = (int(start), int(end))
    return out


def _node_rows(model: Model, rows: dict[int, tuple[int, int]]) -> dict:
    """Rows the planner must compute per output node: the hull of what the
    outputs on that node ask for (all rows for one that asks nothing)."""
    need: dict[str, tuple[int, int]] = {}
    for k, node in enumerate(model.graph.outputs):
        if any(model.graph.outputs[j] == node for j in rows):
            want = rows.get(k, (0, model.graph.output_specs[k].shape[0]))
            need[node] = hull(need.get(node, EMPTY), want)
    return need
