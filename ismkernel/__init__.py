"""ismkernel: exact, fast in-silico saturation mutagenesis of convolutional
sequence models, read from weight files, with no deep-learning framework."""

from ismkernel.analyses import (
    DesignResult,
    Objective,
    PairwiseResult,
    ScanResult,
    design,
    pairwise,
    scan,
    shuffles,
)
from ismkernel.ensemble import Ensemble
from ismkernel.errors import (
    BackendUnavailableError,
    InputError,
    IsmkernelError,
    IsmkernelWarning,
    ModelFileError,
    OutputFileError,
    ShapeError,
    UnsupportedLayerError,
)
from ismkernel.ism import IsmResult, ism
from ismkernel.job import EXAMPLE_FASTA, EXAMPLE_MODEL
from ismkernel.model import Model, load_model
from ismkernel.plot import plot_ism

__version__ = "0.1.0"

__all__ = [
    "EXAMPLE_FASTA",
    "EXAMPLE_MODEL",
    "BackendUnavailableError",
    "DesignResult",
    "Ensemble",
    "InputError",
    "IsmResult",
    "IsmkernelError",
    "IsmkernelWarning",
    "Model",
    "ModelFileError",
    "Objective",
    "OutputFileError",
    "PairwiseResult",
    "ScanResult",
    "ShapeError",
    "UnsupportedLayerError",
    "__version__",
    "design",
    "ism",
    "load_model",
    "pairwise",
    "plot_ism",
    "scan",
    "shuffles",
]
