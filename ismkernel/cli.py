"""The ``ismkernel`` command line."""

from __future__ import annotations

import argparse
import os
import sys

from ismkernel import __version__
from ismkernel.errors import IsmkernelError

__all__ = ["main"]


def _inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from ismkernel.errors import InputError
    from ismkernel.inputs import seq_input_index
    from ismkernel.model import load_model
    from ismkernel.plan import build_plan

    model = load_model(args.model)
    print(model.summary())
    graph = model.graph
    index = seq_input_index(model.inputs, None)
    shapes = {s.name: s.shape for s in model.inputs}
    name = model.inputs[index].name
    length = args.length if args.length is not None else shapes[name][0]
    if length is None:
        print("\nThe input length is free: pass --length L to see the ISM plan.")
        return 0
    if length < 1:
        raise InputError(f"--length must be a positive integer, got {length}")
    shapes[name] = (length,) + tuple(shapes[name][1:])
    if any(None in s for s in shapes.values()):
        print("\nAn input has a free dimension; the ISM plan needs fixed shapes.")
        return 0
    plan = build_plan(graph, graph.inputs[index], shapes, np.arange(length))
    print("\nISM plan (per mutant):")
    print(plan.describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ismkernel",
        description="Exact, fast in-silico saturation mutagenesis of sequence models.",
    )
    parser.add_argument(
        "--version", action="version", version=f"ismkernel {__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser(
        "inspect", help="print a model's layers, shapes, parameters and ISM plan"
    )
    p.add_argument("model", metavar="MODEL", help="Keras .h5 or .keras file")
    p.add_argument(
        "--length",
        type=int,
        metavar="L",
        help="sequence length to plan for (default: the model's own)",
    )
    p.set_defaults(func=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ismkernel`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except IsmkernelError as err:
        print(f"ismkernel: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ismkernel: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
