"""The configs :meth:`Client.submit_merge` takes: a merge config, a
mergekit-moe config (``experts:``) or the named documents of a mergekit-multi
file, and the model references in them."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: ``ref(model, what)``: a model's reference in a spec.
Ref = Callable[[Any, str], str]


def load(config: Any) -> dict[str, Any] | list[dict[str, Any]]:
    """``config`` as submitted: a mapping (a merge or mergekit-moe config), or
    a list of mappings (a mergekit-multi file's documents); a path is read as
    YAML, several documents (or any with ``name``) being a multi file."""
    if isinstance(config, (str, os.PathLike)):
        import yaml

        docs = [d for d in yaml.safe_load_all(Path(config).read_text()) if d is not None]
        one = len(docs) == 1 and not (isinstance(docs[0], Mapping) and "name" in docs[0])
        config = docs[0] if one else docs
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, Sequence) and not isinstance(config, (str, bytes)):
        docs = list(config)
        if not docs or not all(isinstance(d, Mapping) for d in docs):
            raise TypeError("a mergekit-multi config is a non-empty list of mappings "
                            "(merge configs, each with a name but the final one)")
        return [dict(d) for d in docs]
    raise TypeError("config must be a mapping, a list of named mappings (mergekit-multi) "
                    "or a YAML file path")


def is_moe(config: Mapping[str, Any]) -> bool:
    """Whether ``config`` is a mergekit-moe config (the daemon's rule)."""
    return "experts" in config and "merge_method" not in config


def with_refs(config: Mapping[str, Any], ref: Ref) -> dict[str, Any]:
    """``config`` with ``ref`` applied to its model references: base_model,
    models[].model (a bare reference becoming ``{model: REF}``),
    slices[].base_model and slices[].sources[].model."""
    cfg = dict(config)
    if cfg.get("base_model") is not None:
        cfg["base_model"] = ref(cfg["base_model"], "base_model")
    models = []
    for i, m in enumerate(cfg.get("models") or []):
        m = dict(m) if isinstance(m, Mapping) and "model" in m else {"model": m}
        m["model"] = ref(m["model"], f"models[{i}].model")
        models.append(m)
    if "slices" not in cfg:
        cfg["models"] = models
        return cfg
    slices = []
    for i, sl in enumerate(cfg.get("slices") or []):
        sl = dict(sl) if isinstance(sl, Mapping) else sl
        if isinstance(sl, dict):
            if sl.get("base_model") is not None:
                sl["base_model"] = ref(sl["base_model"], f"slices[{i}].base_model")
            srcs = []
            for j, src in enumerate(sl.get("sources") or []):
                if isinstance(src, Mapping) and src.get("model") is not None:
                    src = dict(src, model=ref(src["model"], f"slices[{i}].sources[{j}].model"))
                srcs.append(src)
            sl["sources"] = srcs
        slices.append(sl)
    cfg["slices"] = slices
    return cfg


def _absolute(p: str) -> str:
    """``p`` as an absolute path; a Hub id (org/name) stays as it is."""
    from .._hub import is_hub_id

    return p if is_hub_id(p) else os.path.abspath(p)


def model_path(s: str) -> str:
    """A model path or Hub id as the daemon takes it: absolute (see
    :func:`_absolute`), both parts of mergekit's ``MODEL+LORA``."""
    parts = s.split("+")
    if len(parts) == 2 and all(parts) and not os.path.exists(s):  # MODEL+LORA
        return "+".join(_absolute(p) for p in parts)
    return _absolute(s)


def path_ref(names: Sequence[str] = ()) -> Ref:
    """A reference as a path for Python to read: :func:`model_path` (the
    name of another document of a multi file, in ``NAME`` or ``NAME+LORA``,
    stays as it is); tensors are refused (npsfuse's Python reads checkpoint
    folders)."""

    def ref(model: Any, what: str) -> str:
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"{what} is a {type(model).__name__}: mergekit-moe and "
                            "mergekit-multi configs take checkpoint folders (paths)")
        s = os.fspath(model)
        head, plus, tail = s.partition("+")
        if head in names:
            return head + plus + (_absolute(tail) if tail else "")
        return model_path(s)

    return ref


def moe_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A mergekit-moe config with its model folders as absolute paths."""
    ref = path_ref()
    cfg = dict(config)
    if isinstance(cfg.get("base_model"), (str, os.PathLike)):
        cfg["base_model"] = ref(cfg["base_model"], "base_model")
    experts = cfg.get("experts")
    if isinstance(experts, list):
        cfg["experts"] = [
            dict(e, source_model=ref(e["source_model"], f"experts[{i}].source_model"))
            if isinstance(e, Mapping) and isinstance(e.get("source_model"), (str, os.PathLike))
            else e
            for i, e in enumerate(experts)
        ]
    return cfg


def multi_configs(docs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A mergekit-multi file's documents with their references absolute
    (names of other documents kept)."""
    names = [d["name"] for d in docs if isinstance(d.get("name"), str)]
    ref = path_ref(names)
    return [with_refs(d, ref) for d in docs]
