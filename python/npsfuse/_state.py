"""Turn what users pass (state dicts, modules, checkpoint folders) into state dicts.

A model argument may be

* a mapping of names to ``torch.Tensor`` (or NumPy arrays),
* an ``nn.Module`` (its ``state_dict()``, which shares memory), or
* a path: a Hugging Face folder holding ``model.safetensors`` or sharded
  ``model-0000x-of-0000N.safetensors`` with ``model.safetensors.index.json``
  (else ``pytorch_model.bin`` or its shards, loaded with
  ``torch.load(weights_only=True)``), a single ``.safetensors`` file, or a
  single ``.bin``/``.pt``/``.pth`` file (weights only);
* a PEFT LoRA adapter (folder or ``PeftModel``), see :mod:`npsfuse._peft`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._paths import _has_safetensors, pickle_files, safetensors_files  # noqa: F401  (re-exported)

StateDict = dict[str, torch.Tensor]
ModelLike = Mapping[str, Any] | torch.nn.Module | str | os.PathLike


def _load_pickle(f: Path, what: str) -> StateDict:
    """One pickled checkpoint file, loaded safely: ``weights_only=True`` lets
    only tensors and plain containers through (no code runs), memory-mapped."""
    try:
        sd = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ValueError(f"{what}: cannot load {str(f)!r} as weights only (a PyTorch "
                         f"checkpoint with tensors and plain containers): {exc}") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{what}: {str(f)!r} does not hold a state dict of tensors")
    return {str(k): v for k, v in sd.items()}


def load_state_dict(
    model: ModelLike, what: str = "model", *, base: Mapping[str, torch.Tensor] | None = None
) -> StateDict:
    """Resolve ``model`` to a ``{name: tensor}`` dict (see the module docstring).

    ``what`` names the argument in error messages ("base", "model 2", ...).
    PEFT inputs (:mod:`npsfuse._peft`): a module with LoRA layers gives its
    weights with its active adapters merged in, or without them when
    ``what == "base"``; a LoRA adapter folder is merged into ``base`` (the
    base's state dict), which it needs. Folders without safetensors weights
    are read from ``pytorch_model.bin`` (or its shards) with
    ``torch.load(weights_only=True)``. A path that does not exist may be a
    Hugging Face Hub id or mergekit's ``MODEL+LORA`` (:mod:`npsfuse._hub`).
    """
    from . import _hub, _peft

    if isinstance(model, (str, os.PathLike)) and not os.path.exists(model):
        ref, lora = _hub.split_lora(os.fspath(model))
        if lora is not None:  # mergekit's MODEL+LORA
            folder = _hub.local_path(lora, what)
            if not _peft.is_adapter_path(folder):
                raise ValueError(f"{what}: {lora!r} in {os.fspath(model)!r} is not a PEFT "
                                 f"LoRA adapter folder (no {_peft.CONFIG_FILE} in {folder})")
            return _peft.apply(load_state_dict(ref, what), _peft.read_adapter(folder, what))
        model = _hub.local_path(ref, what)  # a Hub id: its cached snapshot
    if _peft.has_lora_layers(model) or _peft.is_adapter_path(model):
        return _peft.load(model, what, base)
    if isinstance(model, torch.nn.Module):
        return dict(model.state_dict())
    if isinstance(model, (str, os.PathLike)):
        from safetensors.torch import load_file

        sd: StateDict = {}
        pickles = pickle_files(model) if Path(model).exists() else []
        if pickles and not (Path(model).is_dir() and _has_safetensors(Path(model))):
            for f in pickles:
                sd.update(_load_pickle(f, what))
            return sd
        for f in safetensors_files(model):
            sd.update(load_file(str(f)))
        return sd
    if isinstance(model, Mapping):
        return {str(k): torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                for k, v in model.items()}
    raise TypeError(
        f"{what} is a {type(model).__name__}; pass a state dict, an nn.Module, "
        "or the path of a safetensors checkpoint"
    )


def read_config(model: ModelLike) -> dict[str, Any] | None:
    """The Hugging Face ``config.json`` of ``model``, if it has one.

    A folder path gives its ``config.json`` (a single file, the
    ``config.json`` beside it); an ``nn.Module`` with a ``config`` attribute
    (a ``transformers`` model) gives ``config.to_dict()``. Anything else,
    and a missing or unreadable file, gives ``None``.
    """
    d = None
    if isinstance(model, torch.nn.Module):
        to_dict = getattr(getattr(model, "config", None), "to_dict", None)
        d = to_dict() if callable(to_dict) else None
    elif isinstance(model, (str, os.PathLike)):
        p = Path(model)
        f = p / "config.json" if p.is_dir() else p.parent / "config.json"
        with contextlib.suppress(OSError, ValueError):
            d = json.loads(f.read_text())
    return d if isinstance(d, dict) else None


def model_type(model: ModelLike) -> str | None:
    """``config.json``'s ``model_type`` of ``model`` (see :func:`read_config`)."""
    cfg = read_config(model)
    mt = cfg.get("model_type") if cfg else None
    return mt if isinstance(mt, str) else None
