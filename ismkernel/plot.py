"""Plots of results files: for ISM, a heatmap over alternatives and positions
above a sequence logo of the reference bases; for a window scan, a track of
each pattern's effect along the sequence (occlusion, motifs, shuffles); for
pairwise double mutants, the ``L x L`` map of their epistasis; for a design,
its trajectory.

The logo's letter at each position is the reference base, its height the
mean-centred score of that base: the score of the reference minus the mean
over the alternatives at that position. With ``delta`` scores, where the
reference scores 0, that is minus the mean effect of mutating the position:
tall letters above the axis mark bases whose loss lowers the output.

Needs matplotlib (the ``plot`` extra). Figures are drawn without pyplot, so
nothing here touches a global figure state or needs a display.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ismkernel.errors import BackendUnavailableError, InputError
from ismkernel.io.output import atomic_file, check_output_path
from ismkernel.io.results import load_results
from ismkernel.io.sequences import ALPHABET
from ismkernel.reduce import parse_range

__all__ = ["plot_ism", "FORMATS"]

FORMATS = (".png", ".svg", ".pdf")
COLORS = {"A": "#109648", "C": "#255c99", "G": "#f7b32b", "T": "#d62839"}


def _matrix(entry: dict, name: str, task: int | None, n_alts: int) -> np.ndarray:
    """Scores of one sequence as (n_positions, n_alts or 1)."""
    axes = str(entry["axes"]).split(",")[1:]  # drop "seq"
    lead = 2 if "alternative" in axes else 1
    scores = _scalar(entry, name, task, lead, unit="mutant")
    return scores.reshape(scores.shape[0], -1)


def _letter(ax, letter: str, x: float, bottom: float, height: float, color: str):
    """Draw ``letter`` filling [x, x+1] x [bottom, bottom+height]."""
    from matplotlib.patches import PathPatch
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    path = TextPath(
        (0, 0), letter, size=1, prop={"family": "DejaVu Sans", "weight": "bold"}
    )
    box = path.get_extents()
    if box.width == 0 or box.height == 0 or height == 0:
        return
    t = (
        Affine2D()
        .translate(-box.x0, -box.y0)
        .scale(0.9 / box.width, height / box.height)
        .translate(x + 0.05, bottom)
    )
    ax.add_patch(PathPatch(t.transform_path(path), facecolor=color, edgecolor="none"))


def plot_ism(
    path: str | os.PathLike,
    seq: int | str,
    out: str | os.PathLike,
    *,
    output: str | None = None,
    task: int | None = None,
    region: str | None = None,
    title: str | None = None,
) -> str:
    """Plot sequence ``seq`` (name or index) of the results file ``path`` to
    ``out`` (``.png``, ``.svg`` or ``.pdf``); returns ``out``."""
    out = check_output_path(out, "plot file", FORMATS)
    if task is not None and (
        isinstance(task, bool) or not isinstance(task, (int, np.integer))
    ):
        raise InputError(f"task must be a channel index, got {task!r}")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise BackendUnavailableError(
            "plots need matplotlib: pip install 'ismkernel[plot]'"
        ) from None

    data = load_results(path, seq)
    names = list(data["outputs"])
    if output is None:
        output = names[0]
    if output not in data["outputs"]:
        raise InputError(f"'{path}' has no output {output!r}; outputs: {names}")
    if data["kind"] != "ism":
        draw = {"scan": _scan, "pairwise": _pairwise, "design": _design}[data["kind"]]
        fig = draw(data, output, task, parse_range(region, "--region"), title)
        with atomic_file(out) as tmp:
            fig.savefig(tmp, dpi=150, format=os.path.splitext(out)[1][1:].lower())
        return out
    labels = data["labels"]
    scores = _matrix(data["outputs"][output], output, task, len(labels))
    positions = np.asarray(data["positions"])
    window = parse_range(region, "--region")
    keep = np.ones(len(positions), dtype=bool)
    if window is not None:
        end = positions.max() + 1 if window[1] is None else window[1]
        keep = (positions >= window[0]) & (positions < end)
        if not keep.any():
            raise InputError(
                f"--region {region} holds none of the scored positions "
                f"({positions.min()}..{positions.max()})"
            )
    positions, scores = positions[keep], scores[keep]
    onehot = np.asarray(data["onehot"])[positions]

    # Height of each reference letter: its mean-centred score.
    heights = np.zeros(len(positions))
    bases = [""] * len(positions)
    if scores.shape[1] == len(labels):
        centred = scores - scores.mean(axis=1, keepdims=True)
        for i, row in enumerate(onehot):
            if row.max() == 1 and row.sum() == 1:
                base = ALPHABET[int(row.argmax())]
                bases[i] = base
                if base in labels:
                    heights[i] = centred[i, labels.index(base)]
    else:  # l2: one row, the letter scaled by it
        for i, row in enumerate(onehot):
            if row.max() == 1 and row.sum() == 1:
                bases[i] = ALPHABET[int(row.argmax())]
        heights = scores[:, 0]

    width = min(40.0, max(6.0, 0.06 * len(positions) + 2))
    fig = Figure(figsize=(width, 4.2), constrained_layout=True)
    FigureCanvasAgg(fig)
    heat_ax, logo_ax = fig.subplots(2, 1, sharex=True, height_ratios=[1.3, 1.0])
    lim = float(np.abs(scores).max()) or 1.0
    rows = scores.T
    image = heat_ax.imshow(
        rows,
        aspect="auto",
        cmap="RdBu_r",
        vmin=-lim,
        vmax=lim,
        interpolation="nearest",
        extent=(-0.5, len(positions) - 0.5, rows.shape[0] - 0.5, -0.5),
    )
    heat_ax.set_yticks(range(rows.shape[0]))
    heat_ax.set_yticklabels(labels if rows.shape[0] == len(labels) else ["L2"])
    reducer = data["attrs"].get("reduce", "")
    fig.colorbar(image, ax=heat_ax, label=f"{reducer} ({output})", shrink=0.9)
    name = data["names"][data["index"]]
    heat_ax.set_title(title or f"{name}: ISM of {output}")

    for i, (base, h) in enumerate(zip(bases, heights)):
        if base:
            _letter(logo_ax, base, i - 0.5, min(0.0, h), abs(h), COLORS[base])
    top = max(float(np.abs(heights).max()), 1e-12)
    logo_ax.set_ylim(
        min(0.0, heights.min()) * 1.05 - 0.02 * top,
        max(0.0, heights.max()) * 1.05 + 0.02 * top,
    )
    logo_ax.axhline(0, color="0.6", lw=0.5)
    logo_ax.set_xlim(-0.5, len(positions) - 0.5)
    logo_ax.set_ylabel("reference\n(mean-centred)")
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    logo_ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    logo_ax.xaxis.set_major_formatter(
        FuncFormatter(
            lambda v, _: str(positions[int(v)]) if 0 <= int(v) < len(positions) else ""
        )
    )
    logo_ax.set_xlabel("position")
    for side in ("top", "right"):
        logo_ax.spines[side].set_visible(False)
    # Under a temporary name renamed over ``out``, so an existing figure is
    # replaced whole or not at all.
    with atomic_file(out) as tmp:
        fig.savefig(tmp, dpi=150, format=os.path.splitext(out)[1][1:].lower())
    return out


def _scalar(
    entry: dict, name: str, task: int | None, lead: int, unit: str = "edit"
) -> np.ndarray:
    """Scores of one sequence with ``lead`` leading axes kept and the output's
    own axes reduced to one value (by ``task``); ``(*lead axes,)``. ``unit``
    names what a leading index is in the error message."""
    scores = np.asarray(entry["scores"], dtype=np.float64)
    axes = str(entry["axes"]).split(",")[1:]
    tail_axes, tail = axes[lead:], scores.shape[lead:]
    if task is not None:
        if "task" not in tail_axes:
            raise InputError(
                f"--task {task}: output '{name}' has no task axis (axes "
                f"{','.join(tail_axes) or 'none'})"
            )
        axis = tail_axes.index("task")
        if not 0 <= task < tail[axis]:
            raise InputError(
                f"--task {task} is out of range for output '{name}' with "
                f"{tail[axis]} task(s) (0..{tail[axis] - 1})"
            )
        scores = np.take(scores, task, axis=lead + axis)
        tail = scores.shape[lead:]
        tail_axes = tail_axes[:axis] + tail_axes[axis + 1 :]
    if int(np.prod(tail)) != 1:
        raise InputError(
            f"output '{name}' has {int(np.prod(tail))} values per {unit} (axes "
            f"{','.join(tail_axes)}); plot one with --task, after scoring a profile "
            "output with --sum-over"
        )
    return scores.reshape(scores.shape[:lead])


def _figure(width: float, height: float, rows: int = 1, ratios=None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=rows > 1, height_ratios=ratios)
    return fig, axes


def _bases(ax, onehot: np.ndarray, x0: int = 0) -> None:
    """The reference bases as a strip of coloured cells."""
    from matplotlib.colors import ListedColormap

    codes = np.where(onehot.max(axis=1) > 0, onehot.argmax(axis=1), 4)
    cmap = ListedColormap([COLORS[b] for b in ALPHABET] + ["#cccccc"])
    ax.imshow(
        codes[None],
        aspect="auto",
        cmap=cmap,
        vmin=-0.5,
        vmax=4.5,
        interpolation="nearest",
        extent=(x0 - 0.5, x0 + len(codes) - 0.5, 0.5, -0.5),
    )
    ax.set_yticks([])
    ax.set_ylabel("bases", rotation=0, ha="right", va="center")


def _scan(data, output, task, window, title):
    """Each pattern's score along the sequence, at the window's centre."""
    entry = data["outputs"][output]
    axes = str(entry["axes"]).split(",")
    per_pattern = "pattern" in axes
    values = _scalar(entry, output, task, 2 if per_pattern else 1)
    values = values if per_pattern else values[:, None]
    starts = np.asarray(data["positions"])
    width = int(data["attrs"].get("width", 1))
    centre = starts + (width - 1) / 2
    keep = np.ones(len(starts), dtype=bool)
    if window is not None:
        end = starts.max() + width if window[1] is None else window[1]
        keep = (centre >= window[0]) & (centre < end)
        if not keep.any():
            raise InputError("--region holds no window centre of this scan")
    centre, values = centre[keep], values[keep]
    labels = data["attrs"].get("patterns", "")
    labels = (
        json.loads(labels) if isinstance(labels, str) and labels else data["labels"]
    )
    onehot = np.asarray(data["onehot"])
    fig, (ax, strip) = _figure(
        min(40.0, max(7.0, 0.05 * onehot.shape[0] + 3)), 3.6, 2, [4, 0.35]
    )
    reducer = data["attrs"].get("reduce", "")
    if labels and labels[0].startswith("shuffle") and values.shape[1] > 1:
        mean = values.mean(axis=1)
        ax.fill_between(
            centre, values.min(axis=1), values.max(axis=1), color="0.8", lw=0,
            label=f"range over {values.shape[1]} shuffles",
        )  # fmt: skip
        ax.plot(centre, mean, color="#255c99", lw=1.2, label="mean")
    else:
        for q in range(values.shape[1]):
            label = labels[q] if q < len(labels) else f"pattern {q}"
            ax.plot(centre, values[:, q], lw=1.2, label=label)
    ax.axhline(0, color="0.6", lw=0.5)
    ax.set_ylabel(f"{reducer} ({output})")
    ax.legend(loc="best", fontsize=8, frameon=False)
    name = data["names"][data["index"]]
    ax.set_title(title or f"{name}: windows of {width} rows, {output}")
    lo = int(np.floor(centre.min() - width / 2))
    hi = int(np.ceil(centre.max() + width / 2))
    lo, hi = max(lo, 0), min(hi, onehot.shape[0])
    _bases(strip, onehot[lo:hi], lo)
    strip.set_xlim(lo - 0.5, hi - 0.5)
    strip.set_xlabel("position (window centre)")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def _pairwise(data, output, task, window, title):
    """The L x L map of each pair's score (its largest epistasis over the
    alternatives where the file keeps them all)."""
    entry = data["outputs"][output]
    axes = str(entry["axes"]).split(",")
    reducer = data["attrs"].get("reduce", "")
    if "alternative_i" in axes:
        values = _scalar(entry, output, task, 3)
        ref = np.asarray(entry["reference"], dtype=np.float64).reshape(-1)
        if reducer == "raw":  # double mutants' outputs: their change
            values = values - (ref[0] if ref.size == 1 else 0)
        values = np.abs(values).max(axis=(1, 2))
        label = f"max |{'epistasis' if reducer != 'raw' else 'change'}| ({output})"
    else:
        values = _scalar(entry, output, task, 1)
        label = f"{reducer} epistasis ({output})"
    pairs = np.asarray(data["positions"])
    lo, hi = int(pairs.min()), int(pairs.max()) + 1
    if window is not None:
        lo, hi = window[0], hi if window[1] is None else window[1]
        inside = (pairs >= lo).all(axis=1) & (pairs < hi).all(axis=1)
        if not inside.any():
            raise InputError("--region holds no pair of this map")
        pairs, values = pairs[inside], values[inside]
    n = hi - lo
    grid = np.full((n, n), np.nan)
    grid[pairs[:, 0] - lo, pairs[:, 1] - lo] = values
    grid[pairs[:, 1] - lo, pairs[:, 0] - lo] = values
    size = min(12.0, max(5.0, 0.03 * n + 4))
    fig, ax = _figure(size, size * 0.9)
    image = ax.imshow(
        grid,
        cmap="magma",
        interpolation="nearest",
        extent=(lo - 0.5, hi - 0.5, hi - 0.5, lo - 0.5),
    )
    fig.colorbar(image, ax=ax, label=label, shrink=0.8)
    independent = data.get("independent")
    note = ""
    if independent is not None and np.asarray(independent).any():
        note = f"; {int(np.sum(independent))} pairs proven independent"
    name = data["names"][data["index"]]
    ax.set_title(title or f"{name}: pairwise epistasis{note}")
    ax.set_xlabel("position j")
    ax.set_ylabel("position i")
    return fig


def _design(data, output, task, window, title):
    """The objective after each round, each edit labelled."""
    values = np.asarray(data["outputs"][output]["scores"], dtype=np.float64)
    edits = np.asarray(data["edits"])
    labels = data["labels"]
    rounds = np.arange(len(values))
    keep = ~np.isnan(values)
    fig, ax = _figure(max(5.0, 0.5 * len(values) + 3), 3.4)
    ax.plot(rounds[keep], values[keep], marker="o", color="#255c99")
    for r, (pos, alt) in enumerate(edits):
        if pos >= 0 and keep[r + 1]:
            ax.annotate(
                f"{pos}:{labels[alt]}",
                (r + 1, values[r + 1]),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
            )
    goal = data["attrs"].get("objective", "max")
    ax.set_xlabel("round")
    ax.set_ylabel(f"objective ({goal}, {output})")
    ax.set_xticks(rounds)
    name = data["names"][data["index"]]
    ax.set_title(title or f"{name}: design trajectory")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig
