"""npsfuse: slim, transfer and fuse fine-tuned neural networks.

The heavy work runs in Go kernels bound with gopy; tensors cross without
copies through the Arrow C Data Interface.
"""

from __future__ import annotations

from . import _core, compress, nps
from .checkpoint import merge_checkpoints
from .client import Client
from .evolve import Evolver, EvolverResult, search_merge
from .merging import (
    MergeResult,
    get_num_threads,
    merge,
    methods,
    set_num_threads,
    task_vector,
)

__version__ = "0.1.0"

if _core.go.Version() != __version__:  # pragma: no cover - broken install
    raise ImportError(
        f"npsfuse {__version__} found Go core {_core.go.Version()}: reinstall the package"
    )

__all__ = [
    "Client",
    "Evolver",
    "EvolverResult",
    "MergeResult",
    "__version__",
    "compress",
    "nps",
    "get_num_threads",
    "merge",
    "merge_checkpoints",
    "methods",
    "search_merge",
    "set_num_threads",
    "task_vector",
]
