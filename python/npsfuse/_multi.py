"""Several merges that feed each other: mergekit-multi's named multi-document configs.

A file of YAML documents separated by ``---``; each document is a merge config
as ``npsfuse merge`` takes it, plus a ``name``. A model reference (``base_model``,
``models[].model``, ``slices[].sources[].model``, ``tokenizer_source``) that
equals another document's name — alone or as ``NAME+LORA`` — means that merge's
output, written to ``INTERMEDIATE_DIR/NAME``. At most one document has no name:
it is the final merge, written to ``out_path``. Merges run in dependency order;
with ``lazy`` (the default, as mergekit) one whose output folder already holds a
model is not redone. A cycle, a duplicate name or two unnamed documents is an
error before anything runs, as in mergekit 0.1.5's ``mergekit-multi``::

    name: math-code
    merge_method: ties
    base_model: ./base
    models: [{model: ./math, parameters: {weight: 1}}, {model: ./code, parameters: {weight: 1}}]
    ---
    merge_method: slerp
    base_model: ./chat
    models: [{model: ./chat}, {model: math-code}]
    parameters: {t: 0.4}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import merge_checkpoints

__all__ = ["multi_merge"]

_MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _load(
    config: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
) -> dict[str | None, dict[str, Any]]:
    if isinstance(config, (str, os.PathLike)):
        import yaml

        docs = [d for d in yaml.safe_load_all(Path(config).read_text()) if d is not None]
    else:
        docs, config = list(config), "configs"
    out: dict[str | None, dict[str, Any]] = {}
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise ValueError(f"{config}: document {i + 1} is not a mapping")
        d = dict(d)
        name = d.pop("name", None)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"{config}: document {i + 1}: name must be a non-empty string")
        if name in out:
            raise ValueError(f"{config}: " + (f"duplicate merge name {name!r}" if name else
                                              "more than one document without a name (only "
                                              "the final merge may be unnamed)"))
        out[name] = d
    if not out:
        raise ValueError(f"{config}: no merge config in the file")
    return out


def _patch(doc: dict[str, Any], names: set[str], inter: Path) -> tuple[dict[str, Any], set[str]]:
    """``doc`` with references to named merges replaced by their output folders."""
    used: set[str] = set()

    def ref(v: Any) -> Any:
        if isinstance(v, str):
            head, plus, lora = v.partition("+")
            if head in names:
                used.add(head)
                return str(inter / head) + plus + lora
        return v

    d = dict(doc)
    for key in ("base_model", "tokenizer_source"):
        if key in d:
            d[key] = ref(d[key])
    if isinstance(d.get("models"), list):
        d["models"] = [dict(m, model=ref(m["model"])) if isinstance(m, dict) and "model" in m
                       else m for m in d["models"]]
    if isinstance(d.get("slices"), list):
        slices = []
        for s in d["slices"]:
            if isinstance(s, dict) and isinstance(s.get("sources"), list):
                s = dict(s, sources=[dict(x, model=ref(x["model"]))
                                     if isinstance(x, dict) and "model" in x else x
                                     for x in s["sources"]])
            slices.append(s)
        d["slices"] = slices
    return d, used


def _order(deps: Mapping[str | None, set[str]]) -> list[str | None]:
    """Names in an order where every merge follows the merges it uses."""
    done: list[str | None] = []
    state: dict[str | None, int] = {}

    def visit(n: str | None, path: list[str | None]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = " → ".join(str(x) for x in [*path[path.index(n):], n])
            raise ValueError(f"circular dependency between merges: {cycle}")
        state[n] = 1
        for d in sorted(deps[n]):
            visit(d, [*path, n])
        state[n] = 2
        done.append(n)

    for n in sorted(deps, key=lambda x: (x is None, x or "")):
        visit(n, [])
    return done


def _has_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / f).exists()
                                                      for f in _MODEL_FILES)


def multi_merge(
    config: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    intermediate_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    *,
    lazy: bool = True,
    on_merge: Callable[[str, Path], None] | None = None,
    **merge_options: Any,
) -> dict[str, Path]:
    """Run a mergekit-multi file: named merges in dependency order.

    Parameters
    ----------
    config : path or list of dict
        The multi-document YAML file (see the module docstring), or its
        documents, already parsed.
    intermediate_dir : path
        Where named merges are written (``intermediate_dir/NAME``).
    out_path : path, optional
        Output of the unnamed (final) merge; required when there is one.
    lazy : bool
        Skip a named merge whose folder already holds a model (mergekit's default).
    on_merge : callable, optional
        Called as ``on_merge(name, folder)`` before each merge runs.
    **merge_options
        Passed to :func:`npsfuse.merge_checkpoints` for every merge
        (``shard_size``, ``threads``, ``dtype``, ``allow_missing``, ``force``,
        ``quiet``).

    Returns
    -------
    dict
        Merge name (``"final"`` for the unnamed one) → its output folder, in
        the order they ran or were skipped.
    """
    docs = _load(config)
    if None in docs and out_path is None:
        where = config if isinstance(config, (str, os.PathLike)) else "configs"
        raise ValueError(f"{where}: the file has an unnamed (final) merge: give out_path "
                         "(--out-path) for it")
    inter = Path(intermediate_dir)
    names = {n for n in docs if n is not None}
    patched: dict[str | None, dict[str, Any]] = {}
    deps: dict[str | None, set[str]] = {}
    for n, d in docs.items():
        patched[n], deps[n] = _patch(d, names, inter)
        if n in deps[n]:
            raise ValueError(f"circular dependency between merges: {n} → {n}")
    order = _order(deps)
    inter.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for n in order:
        target = inter / n if n is not None else Path(out_path)  # type: ignore[arg-type]
        if n is not None and lazy and _has_model(target):
            out[n] = target
            continue
        if on_merge is not None:
            on_merge(n or "final", target)
        out[n or "final"] = merge_checkpoints(patched[n], target, **merge_options)
    return out
