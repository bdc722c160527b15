"""The merge methods' spec table, read from the Go engine at import.

Every method declares its parameters once, in Go (``gocore/merge/spec.go``
and ``table.go``): names, types, defaults, ranges, per-model or global, and
docs. This module reads that table from the extension and derives what the
Python door needs from it: the keyword names of :func:`npsfuse.merge`, the
defaults shown in its docs, and the JSON the engine resolves (with the same
checks and messages as a YAML config or a daemon job).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from . import _core


@dataclass(frozen=True)
class Param:
    """What the Python door reads of one parameter's declaration
    (``merge.ParamSpec``; its docs, ranges and choices are the engine's)."""

    name: str
    python: str
    kind: str
    per_model: str
    default: Any


@dataclass(frozen=True)
class Method:
    """What the Python door reads of one method's row (``merge.MethodSpec``)."""

    name: str
    params: tuple[str, ...]
    min_models: int
    max_models: int
    normalize: bool
    scope: str
    data_aware: bool
    #: A ``base_model`` that is not among the models is merged as one more
    #: model, the last, with the global parameters (mergekit's ``linear``);
    #: such a method also merges without a base.
    base_as_model: bool = False


@dataclass(frozen=True)
class Table:
    """The whole spec table."""

    methods: dict[str, Method]
    params: dict[str, Param]
    common: tuple[str, ...]


@lru_cache(maxsize=1)
def table() -> Table:
    """The spec table (read from the extension once)."""
    raw = json.loads(_core.call(_core.go.MethodSpecs))
    params = {
        p["name"]: Param(p["name"], p.get("python") or p["name"], p["kind"], p["per_model"],
                         p.get("python_default", p.get("default")))
        for p in raw["params"]
    }
    methods = {
        m["name"]: Method(m["name"], tuple(m.get("params") or ()), m["min_models"],
                          m.get("max_models", 0), m["normalize"], m["scope"],
                          m.get("data_aware", False), m.get("base_as_model", False))
        for m in raw["methods"]
    }
    return Table(methods, params, tuple(raw["common"]))


def _is_list(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, (str, bytes))


def _value(v: Any) -> Any:
    """A keyword's value as JSON: numbers as numbers (NaN/Inf kept as a
    string the engine names), everything else unchanged."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    try:
        f = float(v)  # numpy and torch scalars
    except (TypeError, ValueError):
        return repr(v)
    return f if math.isfinite(f) else repr(f)


def _setting(v: Any) -> Any:
    """A value in mergekit's per-tensor forms (a gradient list, a
    ``{"filter": …, "value": …}`` dict or a list of them) as JSON."""
    if isinstance(v, dict):
        return {k: _setting(x) for k, x in v.items()}
    if _is_list(v):
        return [_setting(x) for x in v]
    return _value(v)


def _is_setting(v: Any) -> bool:
    """A dict, or a non-empty list of dicts: one mergekit filter list for
    every model."""
    return isinstance(v, dict) or (_is_list(v) and len(v) > 0
                                   and all(isinstance(x, dict) for x in v))


def payload(
    method: str, n_models: int, values: dict[str, Any], base_last: bool = False
) -> dict[str, Any]:
    """The engine's JSON for ``values``, keyed by :func:`npsfuse.merge`'s
    keywords (``weights``, ``lam``, method parameters): a list for a
    per-model parameter gives each model its own value (a number, or a
    gradient list or filter list for that model); a dict or a list of dicts
    is a filter list for every model; for a parameter that takes one value,
    a list is a gradient over the layers (see docs/methods.md).

    ``base_last``: the last of the ``n_models`` is the base, merged as a
    model (a ``base_as_model`` method): a per-model list may leave its value
    out (``n_models − 1`` entries), and the base then takes the global
    value, else the declared default, as a YAML config's ``base_model``
    does; with ``n_models`` entries the last is the base's.

    Raises
    ------
    ValueError
        A list of the wrong length, or a list for a parameter that takes
        one value (the engine checks everything else).
    """
    t = table()
    by_python = {p.python: p for p in t.params.values()}
    glob: dict[str, Any] = {}
    models: list[dict[str, Any]] = [{} for _ in range(n_models)]
    for key, v in values.items():
        p = by_python.get(key) or t.params.get(key)
        name = p.name if p else key
        if p is not None and p.kind == "data":
            glob[name] = None  # loaded by the door; the engine checks the method takes it
            continue
        if _is_setting(v):
            glob[name] = _setting(v)
            continue
        if _is_list(v) and p is not None and p.per_model != "global":
            vals = list(v)
            if base_last and len(vals) not in (n_models - 1, n_models):
                raise ValueError(
                    f"{len(vals)} values of {key} given for {n_models - 1} models ({method} "
                    f"also merges the base, as the last model: give {n_models - 1} values, "
                    f"or {n_models} with the base's last)"
                )
            if not base_last and len(vals) != n_models:
                raise ValueError(f"{len(vals)} values of {key} given for {n_models} models")
            for i, x in enumerate(vals):
                models[i][name] = _setting(x)
            continue
        glob[name] = _setting(v)  # a list: a gradient, checked by the engine
    out: dict[str, Any] = {"global": glob}
    if any(models):
        out["models"] = models
    return out


def check(method: str, n_models: int, p: dict[str, Any]) -> None:
    """Resolve ``p`` (see :func:`payload`) in the engine without merging;
    ``ValueError`` lists every problem."""
    _core.call(_core.go.CheckParams, method, json.dumps(p), n_models)


def method_params(method: str) -> dict[str, Any]:
    """The method's own keywords and their defaults (``None``: automatic,
    or, for ``statistics``, required)."""
    t = table()
    return {t.params[n].python: t.params[n].default for n in t.methods[method].params
            if n not in t.common}
