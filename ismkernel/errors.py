"""The exceptions and warnings ismkernel raises.

Every error derives from :class:`IsmkernelError`. Errors about the caller's
arguments also derive from :class:`ValueError`, so code that already catches
``ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "IsmkernelError",
    "ModelFileError",
    "UnsupportedLayerError",
    "ShapeError",
    "InputError",
    "BackendUnavailableError",
    "ResourceError",
    "OutputFileError",
    "IsmkernelWarning",
]


class IsmkernelError(Exception):
    """Base class of every error ismkernel raises."""


class ModelFileError(IsmkernelError):
    """A model file is unreadable, truncated, of an unknown format, or
    inconsistent (missing config, missing or mis-shaped weights)."""


class UnsupportedLayerError(IsmkernelError):
    """A layer, or an option of a layer, that ismkernel cannot represent."""


class ShapeError(IsmkernelError, ValueError):
    """Tensor shapes that do not fit together, in a model or in the arguments."""


class InputError(IsmkernelError, ValueError):
    """An argument with a wrong value, dtype or content (NaN, out of range)."""


class BackendUnavailableError(IsmkernelError):
    """A backend that is unknown or whose dependencies are not installed."""


class ResourceError(IsmkernelError):
    """A computation that cannot fit the device's memory (or the memory
    budget): the message says how many bytes it needs and how to lower them."""


class OutputFileError(IsmkernelError):
    """An output that cannot be written: a missing or read-only directory, a
    file another run is writing, or a full disk."""


class IsmkernelWarning(UserWarning):
    """Something ismkernel did on the user's behalf that they should know of."""
