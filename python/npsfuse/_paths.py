"""Where a checkpoint's weights are: path helpers that import neither torch
nor numpy, so that ``npsfuse merge`` (which hands the work to Go) stays light."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: A PEFT adapter's config and weights files.
CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def _indexed_shards(index: Path, kind: str) -> list[Path]:
    """The shard files a sharded checkpoint's index names, each checked to exist."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{index}: not a valid {kind} ({exc})") from None
    shards = sorted({index.parent / f for f in weight_map.values()})
    for s in shards:
        if not s.is_file():
            raise ValueError(f"{index} names shard {s.name!r}, which does not exist")
    return shards


def _single_or_indexed(p: Path, single: str, kind: str) -> list[Path] | None:
    """Folder ``p``'s weights file ``single``, else the shards its index
    ``single + ".index.json"`` names, else ``None``."""
    if (p / single).is_file():
        return [p / single]
    index = p / f"{single}.index.json"
    return _indexed_shards(index, kind) if index.is_file() else None


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
    found = _single_or_indexed(p, "model.safetensors", "safetensors index")
    if found is not None:
        return found
    found = sorted(p.glob("*.safetensors"))
    if found:
        return found
    raise FileNotFoundError(f"no safetensors weights in folder {str(p)!r}")


def _has_safetensors(p: Path) -> bool:
    return any(p.glob("*.safetensors"))


def pickle_files(path: str | os.PathLike) -> list[Path]:
    """The PyTorch pickle files (``.bin``) of the checkpoint at ``path``, for a
    folder without safetensors weights: ``pytorch_model.bin``, or the shards
    ``pytorch_model.bin.index.json`` names; empty when there are none."""
    p = Path(path)
    if p.is_file():
        return [p] if p.suffix in _PICKLE_SUFFIXES else []
    return _single_or_indexed(p, "pytorch_model.bin", "checkpoint index") or []


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


def is_adapter_path(model: Any) -> bool:
    """Whether ``model`` is the path of a PEFT adapter folder, or of an
    adapter weights file with ``adapter_config.json`` beside it."""
    if not isinstance(model, (str, os.PathLike)):
        return False
    p = Path(model)
    if p.is_dir():
        return (p / CONFIG_FILE).is_file()
    return p.name in WEIGHT_FILES and (p.parent / CONFIG_FILE).is_file()
