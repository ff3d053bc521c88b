"""Ensembles: several models whose outputs are averaged, as SpliceAI averages
its five.

An :class:`Ensemble` stands where a :class:`~ismkernel.Model` does for
``predict``, :func:`~ismkernel.ism`, variant scoring and the command line's
``--model a.h5 --model b.h5``. Its members must take and give arrays of the
same shapes, in the same layout; the ensemble's outputs carry the first
member's names. Each member keeps its own graph, and ISM runs each member's
own incremental plan (built once per member per job) before the outputs are
averaged and then reduced: a reducer such as ``max`` or ``spliceai`` sees the
ensemble's mean, never a mean of the members' scores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ismkernel import config
from ismkernel.errors import InputError, ShapeError
from ismkernel.model import Model, output_picks
from ismkernel.reduce import OutputAxes

__all__ = ["Ensemble", "as_model"]


def _label(i: int, model: Model) -> str:
    name = os.path.basename(getattr(model, "path", "") or "")
    return f"member {i}" + (f" ('{name}')" if name else "")


class Ensemble:
    """Models whose outputs are averaged.

    Parameters
    ----------
    members : sequence of Model
        At least one model; all take inputs of the same shapes and give
        outputs of the same shapes (in their own layouts, which must agree).

    Raises
    ------
    ShapeError
        A member's inputs or outputs differ in shape (or layout) from the
        first member's; the message names the member.
    """

    def __init__(self, members: Sequence[Model]):
        if isinstance(members, Model | Ensemble) or not isinstance(members, Sequence):
            raise InputError(
                f"an ensemble takes a list of models, got {type(members).__name__}"
            )
        flat: list[Model] = []
        for i, m in enumerate(members):
            if isinstance(m, Ensemble):
                flat.extend(m.members)
            elif isinstance(m, Model):
                flat.append(m)
            else:
                raise InputError(
                    f"ensemble member {i} is a {type(m).__name__}, not a Model; "
                    "load it with ismkernel.load_model"
                )
        if not flat:
            raise InputError("an ensemble needs at least one model")
        self.members = flat
        check_members(flat)

    # What the driver and the jobs ask of a model; shapes and layout are the
    # first member's, which every member shares.

    @property
    def first(self) -> Model:
        return self.members[0]

    @property
    def path(self) -> str:
        return ",".join(m.path for m in self.members)

    @property
    def graph(self):
        """The first member's graph (for shapes: every member has them)."""
        return self.first.graph

    @property
    def deferred_length(self) -> bool:
        return any(m.deferred_length for m in self.members)

    @property
    def inputs(self):
        return self.first.inputs

    @property
    def outputs(self):
        return self.first.outputs

    @property
    def input_names(self) -> list[str]:
        return self.first.input_names

    @property
    def output_names(self) -> list[str]:
        return self.first.output_names

    @property
    def input_shapes(self) -> list[tuple]:
        return self.first.input_shapes

    @property
    def output_shapes(self) -> list[tuple]:
        return self.first.output_shapes

    @property
    def input_perms(self):
        return self.first.input_perms

    @property
    def output_perms(self):
        return self.first.output_perms

    @property
    def output_axes(self) -> list[OutputAxes]:
        return self.first.output_axes

    @property
    def n_params(self) -> int:
        return sum(m.n_params for m in self.members)

    def feeds(self, x: Any, dtype: np.dtype, name: str = "x") -> list[np.ndarray]:
        return self.first.feeds(x, dtype, name)

    def from_ir(self, arrays: list[np.ndarray], lead: int) -> list[np.ndarray]:
        return self.first.from_ir(arrays, lead)

    def specialize(self, x: Any) -> Ensemble:
        """The members' graphs for the length of ``x``, checked again: free
        lengths may crop differently once a length is known."""
        return Ensemble([m.specialize(x) for m in self.members])

    def with_length(self, length: int) -> Ensemble:
        return Ensemble([m.with_length(length) for m in self.members])

    def select_outputs(self, outputs: list[str]) -> Ensemble:
        """Each member's outputs at the positions the first member's names
        ``outputs`` have."""
        picks = output_picks(self.output_names, outputs)
        return Ensemble(
            [m.select_outputs([m.output_names[k] for k in picks]) for m in self.members]
        )

    def predict(
        self,
        x: Any,
        *,
        batch_size: int | None = None,
        dtype: str = config.DEFAULT_DTYPE,
    ) -> list[np.ndarray]:
        """The members' predictions (:meth:`Model.predict`), averaged."""
        total = None
        for m in self.members:
            y = m.predict(x, batch_size=batch_size, dtype=dtype)
            total = y if total is None else [t + a for t, a in zip(total, y)]
        return [t / len(self.members) for t in total]

    def summary(self) -> str:
        lines = [f"Ensemble of {len(self.members)} models, outputs averaged:"]
        lines += [f"  {_label(i, m)}" for i, m in enumerate(self.members)]
        return "\n".join(lines) + "\n" + self.first.summary()

    def __repr__(self) -> str:
        names = ", ".join(repr(os.path.basename(m.path)) for m in self.members)
        return f"<Ensemble of {len(self.members)}: {names}>"

    def __len__(self) -> int:
        return len(self.members)


def check_members(members: Sequence[Model]) -> None:
    """Every member takes and gives the first member's shapes, in its layout.

    Raises
    ------
    ShapeError
        Naming the member, the shapes it has and those of member 0.
    """
    first = members[0]
    for i, m in enumerate(members[1:], start=1):
        for kind in ("inputs", "outputs"):
            have = [tuple(s.shape) for s in getattr(m, kind)]
            want = [tuple(s.shape) for s in getattr(first, kind)]
            if have != want:
                raise ShapeError(
                    f"ensemble {_label(i, m)} has {kind} of shape {have} but "
                    f"{_label(0, first)} has {want}; ensemble members must "
                    "share input and output shapes"
                )
        for kind in ("input_perms", "output_perms"):
            if list(getattr(m, kind)) != list(getattr(first, kind)):
                raise ShapeError(
                    f"ensemble {_label(i, m)} lays out its {kind[:-6]}s "
                    f"{getattr(m, kind)} but {_label(0, first)} "
                    f"{getattr(first, kind)} (channels first against last); export "
                    "the members alike"
                )


def as_model(model: Any = None, models: Any = None) -> Model | Ensemble:
    """``model`` (a Model, an Ensemble, or a list of models: an ensemble) or
    ``models`` (a list): exactly one of them."""
    if model is not None and models is not None:
        raise InputError(
            "give either model (one model) or models=[...] (an ensemble), not both"
        )
    if model is None and models is None:
        raise InputError("give a model, or models=[...] for an ensemble")
    if models is not None:
        if isinstance(models, Model | Ensemble):
            models = [models]
        return Ensemble(models)
    if isinstance(model, Model | Ensemble):
        return model
    if isinstance(model, list | tuple):
        return Ensemble(model)
    raise InputError(
        f"model must be a Model (ismkernel.load_model) or a list of them, got "
        f"{type(model).__name__}"
    )
