"""Plots of ISM results: a heatmap over alternatives and positions above a
sequence logo of the reference bases.

The logo's letter at each position is the reference base, its height the
mean-centred score of that base: the score of the reference minus the mean
over the alternatives at that position. With ``delta`` scores, where the
reference scores 0, that is minus the mean effect of mutating the position:
tall letters above the axis mark bases whose loss lowers the output.

Needs matplotlib (the ``plot`` extra). Figures are drawn without pyplot, so
nothing here touches a global figure state or needs a display.
"""

from __future__ import annotations

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
    scores = np.asarray(entry["scores"], dtype=np.float64)
    axes = str(entry["axes"]).split(",")[1:]  # drop "seq"
    has_alt = "alternative" in axes
    lead = 2 if has_alt else 1
    tail = scores.shape[lead:]
    tail_axes = axes[lead:]
    if task is not None:
        if "task" not in tail_axes:
            raise InputError(
                f"--task {task}: output '{name}' has no task axis (axes "
                f"{','.join(tail_axes) or 'none'})"
            )
        axis = tail_axes.index("task")
        n_tasks = tail[axis]
        if not 0 <= task < n_tasks:
            raise InputError(
                f"--task {task} is out of range for output '{name}' with {n_tasks} "
                f"task(s) (0..{n_tasks - 1})"
            )
        scores = np.take(scores, task, axis=lead + axis)
        tail = scores.shape[lead:]
        tail_axes = tail_axes[:axis] + tail_axes[axis + 1 :]
    if int(np.prod(tail)) != 1:
        raise InputError(
            f"output '{name}' has {int(np.prod(tail))} values per mutant "
            f"(axes {','.join(tail_axes)}); plot one with --task, after scoring a "
            "profile output with --sum-over"
        )
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
