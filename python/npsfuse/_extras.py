"""Optional dependencies: each belongs to an extra of the package, and a
missing one is reported with the command that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

#: Extra → the modules it brings.
EXTRAS: dict[str, tuple[str, ...]] = {
    "plot": ("matplotlib",),
    "ray": ("ray",),
    "peft": ("peft",),
    "hub": ("huggingface_hub",),
    "spiking": ("spikingjelly",),
}


def need(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise ``ImportError`` saying that ``what`` needs
    it and that ``pip install 'npsfuse[extra]'`` brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'npsfuse[{extra}]'"
        ) from exc
