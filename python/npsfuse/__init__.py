"""npsfuse: slim, transfer and fuse fine-tuned neural networks.

The heavy work runs in Go kernels bound with gopy; tensors cross without
copies through the Arrow C Data Interface.

``import npsfuse`` loads neither PyTorch nor the Go extension: the parts
that need PyTorch (:func:`merge`, :mod:`npsfuse.nps`, :class:`Evolver`, …)
are imported on first use, so ``npsfuse merge`` on checkpoints never loads
torch, and the Go runtime starts at the first call (see ``_core``: a process
forked before that can use npsfuse).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._core import CancelledError, ResourceExhaustedError
from .checkpoint import merge_checkpoints

__version__ = "0.1.0"

if TYPE_CHECKING:
    from . import compress, nps, spiking, stats
    from ._adamerging import adamerging
    from ._moe import moe
    from ._multi import multi_merge
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

#: Public names defined in a submodule that imports torch: name → module.
_LAZY = {
    "Client": ".client",
    "adamerging": "._adamerging",
    "Evolver": ".evolve",
    "EvolverResult": ".evolve",
    "search_merge": ".evolve",
    "MergeResult": ".merging",
    "get_num_threads": ".merging",
    "merge": ".merging",
    "methods": ".merging",
    "moe": "._moe",
    "multi_merge": "._multi",
    "set_num_threads": ".merging",
    "task_vector": ".merging",
}
_SUBMODULES = ("compress", "nps", "spiking", "stats")


def __getattr__(name: str) -> Any:
    """Import the submodule behind a public name on first access (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        for n, m in _LAZY.items():  # bind every name the module provides
            if m == _LAZY[name]:
                globals()[n] = getattr(module, n)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "CancelledError",
    "Client",
    "Evolver",
    "EvolverResult",
    "MergeResult",
    "ResourceExhaustedError",
    "__version__",
    "adamerging",
    "compress",
    "nps",
    "get_num_threads",
    "merge",
    "merge_checkpoints",
    "methods",
    "moe",
    "multi_merge",
    "search_merge",
    "set_num_threads",
    "spiking",
    "stats",
    "task_vector",
]
