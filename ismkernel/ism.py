"""The public :func:`ism` driver."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ismkernel import config
from ismkernel.backends import get_backend, resolve_backend
from ismkernel.ensemble import Ensemble, as_model
from ismkernel.errors import InputError, ShapeError
from ismkernel.inputs import (
    check_alternatives,
    check_dtype,
    check_memory_budget,
    check_positions,
    check_positive_int,
    output_indices,
    seq_input_index,
)
from ismkernel.ir import nodes as ops
from ismkernel.ir.graph import Graph
from ismkernel.model import Model, _from_ir
from ismkernel.plan import Edits
from ismkernel.plan.intervals import EMPTY, hull
from ismkernel.reduce import (
    PROFILE_REDUCERS,
    REDUCERS,
    OutputAxes,
    OutputSink,
    ScoreSink,
    check_profile_options,
    parse_range,
    profile_range,
    reduce_profile_outputs,
    reduce_scores,
    reducer_name,
    select_output,
)

__all__ = [
    "ism",
    "IsmResult",
    "IsmRun",
    "EditRun",
    "EnsembleRun",
    "make_run",
    "fix_length",
]

#: Every reducer ism() takes: per value, and along a profile's length.
ISM_REDUCERS = REDUCERS + PROFILE_REDUCERS


def check_reduce(
    reduce: str | None, sum_over: Any = None, over: Any = None, around: Any = None
) -> str | None:
    """``reduce`` as the name of a reducer :func:`ism` knows (see
    :func:`~ismkernel.reduce.reducer_name`), with options it takes."""
    if reduce is not None:
        reduce = reducer_name(reduce, ISM_REDUCERS)
    check_profile_options(reduce, sum_over, over, around)
    if reduce in PROFILE_REDUCERS:
        profile_range(reduce, over, around)
    return reduce


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
    seq_len : int
        Length of the mutated input (what ``around=`` aligns rows with).
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
    #: backend reduced as it went (a profile reducer's: the whole output).
    score_reference: list[np.ndarray] | None = None
    seq_len: int | None = None

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
        over: Any = None,
        around: int | None = None,
    ) -> list[np.ndarray]:
        """Per chosen output, the reducer ``kind`` (see :mod:`ismkernel.reduce`).

        ``raw``, ``delta``, ``log2fc``, ``mean-centred``, ``l2``: of the
        channels ``tasks``, summed over ``sum_over`` (``"START:END"``) of a
        profile's length.

        ``max``, ``min``: per channel of ``tasks``, the largest (smallest)
        change over rows ``over`` (``"START:END"``) of the profile, or over
        the ``2 * around + 1`` rows centred on each mutated position (default
        all rows), with its position; ``spliceai``: SpliceAI's four delta
        scores and their positions, of the acceptor and donor channels
        ``tasks`` (default 1, 2), ``around`` 50 by default. These end in an
        axis of fields, :data:`ismkernel.reduce.FIELDS` ``[kind]``
        (:func:`ismkernel.reduce.named_fields` names them).
        """
        kind = reducer_name(kind, ISM_REDUCERS)
        check_profile_options(kind, sum_over, over, around)
        out = []
        if kind in PROFILE_REDUCERS:
            span = profile_range(kind, over, around)
            for k in self.output_index(outputs):
                out.append(
                    reduce_profile_outputs(
                        self.outputs[k],
                        self.reference[k],
                        kind,
                        self.axes[k],
                        span,
                        self.positions,
                        self.seq_len,
                        tasks,
                    )
                )
            return out
        for k in self.output_index(outputs):
            mut, ref = self.selected(k, tasks, sum_over)
            out.append(reduce_scores(mut, ref, kind, self.output_names[k]))
        return out

    def score_references(
        self, kind: str, tasks: Any = None, sum_over: Any = None
    ) -> list[np.ndarray]:
        """Per output, the reference as :attr:`score_reference` holds it for
        the reducer ``kind``: on ``tasks`` and summed over ``sum_over``, or
        the whole output for a profile reducer."""
        if kind in PROFILE_REDUCERS:
            return list(self.reference)
        window = parse_range(sum_over, "sum_over")
        return [
            select_output(r, a, 1, tasks, window)
            for r, a in zip(self.reference, self.axes)
        ]


def ism(
    model: Model | Ensemble | list[Model] | None = None,
    x: Any = None,
    *,
    models: list[Model] | None = None,
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
    over: Any = None,
    around: int | None = None,
    client: Any = None,
    output_rows: dict | None = None,
    early_exit: bool | None = None,
    precision: str = "float32",
) -> IsmResult:
    """In-silico saturation mutagenesis of ``model`` on sequences ``x``.

    Parameters
    ----------
    model : Model, Ensemble or list of Model
        The model; a list (or an :class:`~ismkernel.ensemble.Ensemble`) is an
        ensemble, whose outputs are averaged before any reducer.
    x : ndarray of float32, shape (n_seqs, seq_len, n_channels), or list / dict
        The sequences (one-hot or not), in the model's own layout: ONNX models
        from PyTorch take ``(n_seqs, n_channels, seq_len)``. For a model with several inputs, a list
        in model input order or a dict by input name; inputs other than the
        mutated one stay fixed per sequence. NumPy arrays give NumPy results;
        with ``backend="cuda"``, CuPy arrays give CuPy results on their
        device.
    models : list of Model, optional
        An ensemble, instead of ``model``: members must share input and
        output shapes; each runs its own incremental plan, and their outputs
        are averaged (``reference`` and ``outputs`` are the means).
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
        ``log2fc``, ``mean-centred``, ``l2``; ``max``, ``min`` or
        ``spliceai`` along a profile's length: see :meth:`IsmResult.reduce`).
    over : str or (int, int), optional
        ``max``/``min``/``spliceai``: the rows ``"START:END"`` of the profile
        they look at.
    around : int, optional
        ``max``/``min``/``spliceai``: look at the ``2 * around + 1`` rows
        centred on each mutated position instead (the output taken as
        centred on the input; ``spliceai`` default 50, as its package).
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
    model = as_model(model, models)
    if x is None:
        raise InputError("ism() needs the sequences x")
    options = dict(
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
    run = make_run(model, **options)
    reduce = check_reduce(reduce, None, over, around)
    if client is not None:
        members = model.members if isinstance(model, Ensemble) else [model]
        parts = []
        for member in members:
            member = member.specialize(x)
            parts.append(
                _ism_on_cluster(client, member, member.feeds(x, run.dtype), options)
            )
        result = _average(parts, members) if len(parts) > 1 else parts[0]
    else:
        result = run(x, progress=progress)
    if reduce is not None:
        result.scores = result.reduce(reduce, over=over, around=around)
    return result


def fix_length(model: Model | Ensemble, length: int) -> Model | Ensemble:
    """``model`` for sequences of ``length``, with every shape known: a graph
    whose input length is free (a Keras ``Input(shape=(None, 4))``, as
    SpliceAI's) is rebuilt with that length, so its outputs' shapes are
    concrete; weights are shared, not copied. An ensemble, member by member.
    """
    if isinstance(model, Ensemble):
        return Ensemble([fix_length(m, length) for m in model.members])
    model = model.with_length(length)
    g = model.graph
    free = [n for n in g.inputs if g.nodes[n].shape and g.nodes[n].shape[0] is None]
    if not free:
        return model
    new = Graph()
    for name, node in g.nodes.items():
        op = node.op
        if name in free:
            op = ops.Input((int(length),) + tuple(op.shape[1:]))
        new.add(dataclasses.replace(node, op=op, shape=None))
    new.inputs = list(g.inputs)
    new.outputs = list(g.outputs)
    new.output_names = list(g.output_names)
    return Model(
        new,
        model.path,
        model.format,
        model.keras_version,
        producer=model.producer,
        input_perms=model.input_perms,
        output_perms=model.output_perms,
    )


def make_run(model: Model | Ensemble, **options) -> IsmRun | EnsembleRun:
    """The ISM run of a model (:class:`IsmRun`) or of an ensemble
    (:class:`EnsembleRun`); ``options`` are those of :func:`ism`."""
    if isinstance(model, Ensemble):
        return EnsembleRun(model, **options)
    return IsmRun(model, **options)


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

    def score_sink(
        self,
        model,
        rows,
        reduce,
        tasks,
        sum_over,
        picks=None,
        *,
        over=None,
        around=None,
        plan=None,
        seq_len=None,
    ) -> ScoreSink:
        """A sink reducing ``model``'s outputs (``picks``: some of them) as
        chunks finish; a profile reducer also needs the ``plan`` (its
        positions) and the mutated input's ``seq_len``."""
        perms = model.output_perms
        profile = reduce in PROFILE_REDUCERS
        return ScoreSink(
            reduce,
            model.output_axes,
            lambda k, a, lead: _from_ir(a, perms[k], lead),
            tasks=tasks,
            sum_over=parse_range(sum_over, "sum_over"),
            rows=rows,
            picks=picks,
            span=profile_range(reduce, over, around) if profile else None,
            positions=plan.positions if profile else None,
            seq_len=seq_len,
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
        over: Any = None,
        around: int | None = None,
    ) -> IsmResult:
        """Every edit of ``x``. With ``keep_outputs=False``, ``reduce`` is
        computed by the backend as chunks finish (on ``tasks``, summed over
        ``sum_over``, or along ``over``/``around`` for a profile reducer) and
        ``outputs`` is None; otherwise every output is kept and ``reduce`` is
        computed from them. ``skip``: ``(n_seqs, n_sites, n_variants)``
        mutants not computed (their outputs are left unset); ``values``: the
        rows the edits write for these sequences, in place of the plan's (see
        :func:`ismkernel.backends.engine.walk`)."""
        model, feeds, index, plan, rows = self.plan_for(x)
        reduce = check_reduce(reduce, sum_over, over, around)
        seq_len = feeds[index].shape[1]
        if keep_outputs:
            sink = OutputSink(rows)
        else:
            if reduce is None:
                raise InputError("keep_outputs=False needs a reducer (reduce=...)")
            sink = self.score_sink(
                model,
                rows,
                reduce,
                tasks,
                sum_over,
                over=over,
                around=around,
                plan=plan,
                seq_len=seq_len,
            )
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
            seq_len=seq_len,
        )
        if not keep_outputs:
            result.scores = sink.scores
            result.score_reference = sink.reference
        elif reduce is not None:
            result.scores = result.reduce(
                reduce, tasks=tasks, sum_over=sum_over, over=over, around=around
            )
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


class EnsembleRun:
    """ISM of an ensemble with fixed options, over any number of batches of
    sequences: one :class:`IsmRun` per member, so each member's plan is
    built once; the members' reference and mutant outputs are averaged
    (summed in member order, then divided, as ``np.mean`` over a stack of
    them), and only then reduced. Parameters are those of :func:`ism`.

    A batch holds every member's outputs while it runs: ``(n_seqs,
    n_positions, n_alts, *out)`` twice (the sum and the member's).
    """

    label = "ISM"

    def __init__(self, ensemble: Ensemble, **options):
        self.ensemble = ensemble
        self.runs = [IsmRun(m, **options) for m in ensemble.members]
        self.dtype = self.runs[0].dtype
        self.backend_name = self.runs[0].backend_name

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
        over: Any = None,
        around: int | None = None,
    ) -> IsmResult:
        """As :meth:`IsmRun.__call__`, on the members' mean outputs. With
        ``keep_outputs=False`` the scores are reduced from the means and the
        outputs then dropped."""
        reduce = check_reduce(reduce, sum_over, over, around)
        if not keep_outputs and reduce is None:
            raise InputError("keep_outputs=False needs a reducer (reduce=...)")
        if values is not None:
            raise InputError("an ensemble's ISM takes no per-call values")
        bar = None
        update = progress if callable(progress) else None
        if progress is True:
            from tqdm.auto import tqdm

            _, feeds, index, plan, _ = self.runs[0].plan_for(x)
            n = feeds[index].shape[0] * plan.edits.n_sites * plan.edits.n_variants
            bar = tqdm(total=n * len(self.runs), unit="mutant", desc=self.label)
            update = bar.update
        try:
            parts = (run(x, progress=update or False, skip=skip) for run in self.runs)
            result = _average(parts, self.ensemble.members)
        finally:
            if bar is not None:
                bar.close()
        if reduce is not None:
            result.scores = result.reduce(
                reduce, tasks=tasks, sum_over=sum_over, over=over, around=around
            )
            if not keep_outputs:
                result.score_reference = result.score_references(
                    reduce, tasks, sum_over
                )
                result.outputs = None
        return result


def _average(results, members: list[Model]) -> IsmResult:
    """The mean of the members' ISM ``results`` (an iterable, consumed one
    at a time), checked to have the first member's output shapes."""
    from ismkernel.ensemble import _label

    first = None
    reference = outputs = None
    stats: list[dict] = []
    for i, res in enumerate(results):
        shapes = [tuple(o.shape) for o in res.outputs]
        if first is None:
            first, want = res, shapes
            # the first member's arrays are its own (a fresh sink per call)
            reference, outputs = list(res.reference), list(res.outputs)
        else:
            if shapes != want:
                raise ShapeError(
                    f"ensemble {_label(i, members[i])} gives outputs of shape "
                    f"{shapes} on these sequences but {_label(0, members[0])} "
                    f"gives {want}; ensemble members must share input and output "
                    "shapes"
                )
            # mutants a run was told to skip hold whatever memory held, which
            # may be NaN or overflow: not a result, so not a warning
            with np.errstate(all="ignore"):
                for acc, r in zip(reference, res.reference):
                    acc += r
                for acc, o in zip(outputs, res.outputs):
                    acc += o
        stats.append(res.stats)
    n = len(stats)
    if n > 1:
        with np.errstate(all="ignore"):
            for acc in reference + outputs:
                acc /= n
    summed = {}
    for key in ("flops_naive", "flops_plan", "n_mutants", "n_copied"):
        if all(key in s for s in stats):
            summed[key] = sum(s[key] for s in stats)
    return IsmResult(
        reference=reference,
        outputs=outputs,
        positions=first.positions,
        alternatives=first.alternatives,
        output_names=first.output_names,
        seq_input=first.seq_input,
        backend=first.backend,
        stats={"n_members": n, "members": stats, **summed},
        axes=first.axes,
        seq_len=first.seq_len,
    )


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
        seq_len=first.seq_len,
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
