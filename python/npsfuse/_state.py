"""Turn what users pass (state dicts, modules, checkpoint folders) into state dicts.

A model argument may be

* a mapping of names to ``torch.Tensor`` (or NumPy arrays),
* an ``nn.Module`` (its ``state_dict()``, which shares memory), or
* a path: a Hugging Face folder holding ``model.safetensors`` or sharded
  ``model-0000x-of-0000N.safetensors`` with ``model.safetensors.index.json``,
  or a single ``.safetensors`` file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

StateDict = dict[str, torch.Tensor]
ModelLike = Mapping[str, Any] | torch.nn.Module | str | os.PathLike


def safetensors_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files that make up the checkpoint at ``path``.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist or holds no safetensors weights.
    ValueError
        When the shard index is malformed or names a missing shard.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model path {str(p)!r} does not exist")
    if p.is_file():
        if p.suffix != ".safetensors":
            raise ValueError(f"{str(p)!r} is not a .safetensors file")
        return [p]
    single = p / "model.safetensors"
    if single.is_file():
        return [single]
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{index}: not a valid safetensors index ({exc})") from None
        shards = sorted({p / f for f in weight_map.values()})
        for s in shards:
            if not s.is_file():
                raise ValueError(f"{index} names shard {s.name!r}, which does not exist")
        return shards
    found = sorted(p.glob("*.safetensors"))
    if found:
        return found
    raise FileNotFoundError(f"no safetensors weights in folder {str(p)!r}")


def load_state_dict(model: ModelLike, what: str = "model") -> StateDict:
    """Resolve ``model`` to a ``{name: tensor}`` dict (see the module docstring).

    ``what`` names the argument in error messages ("base", "model 2", ...).
    """
    if isinstance(model, torch.nn.Module):
        return dict(model.state_dict())
    if isinstance(model, (str, os.PathLike)):
        from safetensors.torch import load_file

        sd: StateDict = {}
        for f in safetensors_files(model):
            sd.update(load_file(str(f)))
        return sd
    if isinstance(model, Mapping):
        out: StateDict = {}
        for k, v in model.items():
            if isinstance(v, np.ndarray):
                v = torch.from_numpy(v)
            out[str(k)] = v
        return out
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
    if isinstance(model, torch.nn.Module):
        cfg = getattr(model, "config", None)
        to_dict = getattr(cfg, "to_dict", None)
        if callable(to_dict):
            d = to_dict()
            return d if isinstance(d, dict) else None
        return None
    if isinstance(model, (str, os.PathLike)):
        p = Path(model)
        f = p / "config.json" if p.is_dir() else p.parent / "config.json"
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            return None
        return d if isinstance(d, dict) else None
    return None


def model_type(model: ModelLike) -> str | None:
    """``config.json``'s ``model_type`` of ``model`` (see :func:`read_config`)."""
    cfg = read_config(model)
    mt = cfg.get("model_type") if cfg else None
    return mt if isinstance(mt, str) else None
