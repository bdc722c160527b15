"""``npsfuse.merge`` with mergekit's ``slices=`` and tokenizer keywords.

A frankenmerge and a merged vocabulary are features of checkpoints on disk
(layer stacks, tokenizer files), which the streaming engine implements for
``npsfuse merge``. :func:`npsfuse.merge` gives them to that one
implementation instead of a second one: it writes its arguments as the
mergekit config they mean (:func:`config`), runs
:func:`npsfuse.merge_checkpoints` into a temporary folder and reads the
result back. The same keywords therefore give the same bits as the same
YAML through ``npsfuse merge`` and the daemon.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: The keywords that route a call through a config.
KEYWORDS = ("slices", "tokenizer_source", "tokenizer", "chat_template")

#: npsfuse.merge keywords that a config cannot express.
_NOT_IN_CONFIG = ("include", "exclude", "statistics")


def _ref(x: Any, where: str) -> str:
    """A model reference of a config: a checkpoint path, a Hub id or
    ``MODEL+LORA``, as ``npsfuse merge`` reads them."""
    if isinstance(x, (str, os.PathLike)):
        return os.fspath(x)
    raise ValueError(
        f"{where}: {', '.join(KEYWORDS)} merge checkpoints on disk (npsfuse merge's "
        f"streaming engine), so models must be checkpoint folders, files or Hub ids; got a "
        f"{type(x).__name__} (save it with save_pretrained first)"
    )


def _source_ref(x: Any, models: Sequence[Any], where: str) -> str:
    """A slice source's or tokenizer rule's model: an index into ``models``
    or a reference."""
    if isinstance(x, int) and not isinstance(x, bool):
        if not 0 <= x < len(models):
            raise ValueError(f"{where}: model index {x} is not among the {len(models)} models")
        return _ref(models[x], f"models[{x}]")
    return _ref(x, where)


def _tokenizer_source(x: Any, models: Sequence[Any], where: str) -> Any:
    """A tokenizer source: ``base``, ``union`` or a model (:func:`_source_ref`)."""
    return x if x in ("base", "union") else _source_ref(x, models, where)


def config(
    base: Any,
    models: Sequence[Any],
    method: str,
    payload: Mapping[str, Any],
    *,
    dtype: str | None,
    transposed: Sequence[str] | None,
    keywords: Mapping[str, Any],
) -> dict[str, Any]:
    """The mergekit config of a :func:`npsfuse.merge` call: ``payload`` is
    the engine's parameters (:func:`npsfuse._spec.payload`), whose global
    values become ``parameters`` (``scope`` and ``seed`` top-level keys) and
    whose per-model values each model's ``parameters``; ``keywords`` holds
    the call's ``slices``, ``tokenizer_source``, ``tokenizer`` and
    ``chat_template``. With ``slices``, ``models`` is not merged as a list:
    it is the table a slice source's (or a tokenizer rule's) ``model`` may
    index instead of naming a reference."""
    conf: dict[str, Any] = {"merge_method": method}
    if base is not None:
        conf["base_model"] = _ref(base, "base")
    glob = dict(payload.get("global", {}))
    for key in ("scope", "seed"):
        if key in glob:
            conf[key] = glob.pop(key)
    if glob:
        conf["parameters"] = glob
    per_model = payload.get("models") or [{} for _ in models]
    slices = keywords.get("slices")
    if slices is not None:
        if any(per_model):
            raise ValueError(
                "with slices=, per-model parameters go into each source's parameters "
                "(one value per model in a keyword is for models=)"
            )
        conf["slices"] = _slices(slices, models)
    else:
        conf["models"] = [
            {"model": _ref(m, f"models[{i}]"), **({"parameters": p} if p else {})}
            for i, (m, p) in enumerate(zip(models, per_model, strict=True))
        ]
    if keywords.get("tokenizer_source") is not None:
        conf["tokenizer_source"] = _tokenizer_source(
            keywords["tokenizer_source"], models, "tokenizer_source"
        )
    if keywords.get("chat_template") is not None:
        conf["chat_template"] = keywords["chat_template"]
    if keywords.get("tokenizer") is not None:
        conf["tokenizer"] = _tokenizer_block(keywords["tokenizer"], models)
    if dtype is not None:
        conf["out_dtype"] = dtype
    if transposed is not None:
        conf["transposed"] = [transposed] if isinstance(transposed, str) else list(transposed)
    return conf


def _slices(slices: Any, models: Sequence[Any]) -> list[dict[str, Any]]:
    """mergekit's slices, each source's ``model`` a reference (an index
    into ``models`` resolved)."""
    if not isinstance(slices, Sequence) or isinstance(slices, (str, bytes)) or not slices:
        raise ValueError("slices must be a non-empty list of {sources: [...]} (mergekit's slices)")
    out = copy.deepcopy(list(slices))
    for i, s in enumerate(out):
        if not isinstance(s, dict) or not isinstance(s.get("sources"), list):
            raise ValueError(f"slices[{i}] must be a mapping with a sources list")
        for j, src in enumerate(s["sources"]):
            if isinstance(src, dict) and "model" in src:
                src["model"] = _source_ref(src["model"], models, f"slices[{i}].sources[{j}].model")
        if "base_model" in s:
            s["base_model"] = _source_ref(s["base_model"], models, f"slices[{i}].base_model")
    return out


def _tokenizer_block(block: Any, models: Sequence[Any]) -> Any:
    """The ``tokenizer:`` block with its models as references."""
    if not isinstance(block, Mapping):
        return block  # the engine names what is wrong
    out = copy.deepcopy(dict(block))
    if out.get("source") is not None:
        out["source"] = _tokenizer_source(out["source"], models, "tokenizer.source")
    for name, rule in (out.get("tokens") or {}).items():
        if not isinstance(rule, dict):
            continue
        where = f"tokenizer.tokens[{name!r}].source"
        s = rule.get("source")
        if isinstance(s, dict) and "model" in s:
            s["model"] = _source_ref(s["model"], models, where + ".model")
        elif s is not None and not isinstance(s, dict):
            rule["source"] = _source_ref(s, models, where)
    return out


def check_keywords(given: Mapping[str, Any]) -> None:
    """Refuse the :func:`npsfuse.merge` keywords a config cannot carry."""
    bad = [k for k in _NOT_IN_CONFIG if given.get(k) is not None]
    if bad:
        raise ValueError(
            f"{', '.join(bad)} cannot be combined with {', '.join(KEYWORDS)}: those merge "
            "checkpoints through npsfuse merge's config, which has no such key"
        )


def run(conf: Mapping[str, Any], threads: int | None) -> tuple[dict[str, Any], Any]:
    """Merge ``conf`` with :func:`npsfuse.merge_checkpoints` into a
    temporary folder; return the state dict (in the output's order) and the
    merged tokenizer (``None`` without tokenizer keys)."""
    from safetensors.torch import load_file

    from .checkpoint import merge_checkpoints

    with tempfile.TemporaryDirectory(prefix="npsfuse-merge-") as d:
        out = merge_checkpoints(dict(conf), Path(d) / "out", threads=threads, quiet=True)
        sd: dict[str, Any] = {}
        for f in sorted(out.glob("*.safetensors")):
            sd.update(load_file(f))
        tok = None
        if any(conf.get(k) is not None for k in ("tokenizer_source", "tokenizer", "chat_template")):
            import transformers

            tok = transformers.AutoTokenizer.from_pretrained(out)
    return sd, tok
