"""Store many pruned task vectors compactly next to one base model.

NPS-Pruning's compression use (METHODS.md, "NPS-Pruning", Uses): keep θ₀
once and, per task, a bit mask of the kept entries plus their values. One
file (a safetensors container) holds several tasks; :func:`load` rebuilds
θ₀ + λ·τ_task bit for bit as :meth:`npsfuse.nps.NPSResult.state_dict` does.

File layout (safetensors):

* ``"{t}:{i}:mask"`` — uint8, ``np.packbits`` (big bit order) of the
  flattened tensor i's "entry is kept" mask for task t (⌈n/8⌉ bytes);
* ``"{t}:{i}:values"`` — the kept entries in flat order, in the base
  tensor's dtype (absent when the task keeps nothing in that tensor);
* metadata ``format = "npsfuse.compressed"``, ``version``, and
  ``npsfuse.meta``: JSON with the base's :func:`npsfuse.nps.fingerprint`
  over the covered tensors, the tensors (name, shape, dtype), and per task
  its name, keep (the NPS result's density; the file format's name),
  kept count and NPS weights when known.

"Kept" means a non-zero bit pattern, so −0.0 survives and a round trip is
exact. Bits per parameter for a task are 1 (the mask) plus
density × bits-per-value: r = 0.05 in float32 is 2.6 bits, in bfloat16 1.8.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._state import ModelLike, StateDict, load_state_dict
from ._vocab import deprecated
from .nps import NPSResult, fingerprint
from .nps._engine import _apply
from .nps._result import _INT_OF_SIZE, _atomic_write, check_base, read_header, task_vector

__all__ = ["load", "load_task_vector", "report", "save", "tasks"]

_FORMAT = "npsfuse.compressed"
_VERSION = 1
_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


def _kept_mask(t: torch.Tensor) -> torch.Tensor:
    """Entries whose bit pattern is not all zeros (so −0.0 counts as kept)."""
    flat = t.reshape(-1)
    return flat.view(_INT_OF_SIZE[flat.element_size()]) != 0


def _as_task(
    name: str, r: NPSResult | Mapping[str, torch.Tensor] | str | os.PathLike, base: StateDict
) -> tuple[StateDict, dict[str, Any]]:
    """τ of one task (cast to the base's dtypes) and its metadata."""
    tau, res = task_vector(r, base, f"task {name!r}", f"task {name!r}")
    if res is not None:
        return tau, {"keep": res.density, "weights": res.weights.tolist(), "score": res.score
                     if np.isfinite(res.score) else None, "config": res.config}
    out: StateDict = {}
    for k, t in tau.items():
        b = base[k]
        if not b.is_floating_point():
            raise ValueError(f"task {name!r}: tensor {k!r} is a {b.dtype} buffer of the "
                             "base; only floating-point tensors have task vectors")
        if tuple(t.shape) != tuple(b.shape):
            raise ValueError(f"task {name!r}: tensor {k!r} has shape {tuple(t.shape)}, "
                             f"the base {tuple(b.shape)}")
        out[k] = t.detach().to(b.dtype)
    return out, {}


def save(
    path: str | os.PathLike,
    base: ModelLike,
    results: Mapping[str, NPSResult | Mapping[str, torch.Tensor] | str | os.PathLike],
) -> Path:
    """Write several tasks' pruned task vectors to one compressed file, atomically.

    Parameters
    ----------
    path
        The output file (conventionally ``*.safetensors``); replaced if it
        exists, never left half-written.
    base
        θ₀; each :class:`~npsfuse.nps.NPSResult` is checked against it.
    results
        Task name → :class:`~npsfuse.nps.NPSResult`, the path of a saved one,
        or a task-vector state dict (cast to the base's dtypes).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        No tasks, a result computed from another base, mismatched tensors.
    """
    from safetensors.torch import save_file

    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a non-empty mapping of task name to result")
    sd = load_state_dict(base, "base")
    taus: dict[str, StateDict] = {}
    infos: dict[str, dict[str, Any]] = {}
    for name, r in results.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"task names must be non-empty strings, got {name!r}")
        taus[name], infos[name] = _as_task(name, r, sd)
    covered = [k for k in sd if any(k in t for t in taus.values())]
    params = sum(sd[k].numel() for k in covered)
    tensors: dict[str, torch.Tensor] = {}
    task_meta = []
    for ti, (name, tau) in enumerate(taus.items()):
        kept = 0
        for i, k in enumerate(covered):
            t = tau.get(k)
            if t is None:
                t = torch.zeros(sd[k].shape, dtype=sd[k].dtype)
            flat = t.contiguous().reshape(-1)
            mask = _kept_mask(flat)
            nk = int(mask.sum())
            kept += nk
            tensors[f"{ti}:{i}:mask"] = torch.from_numpy(np.packbits(mask.numpy()))
            if nk:
                tensors[f"{ti}:{i}:values"] = flat[mask].contiguous()
        task_meta.append({"name": name, "kept": kept, "parameters": params, **infos[name]})
    meta = {
        "base_fingerprint": fingerprint(sd, covered),
        "tensors": [{"name": k, "shape": list(sd[k].shape), "dtype": str(sd[k].dtype)}
                    for k in covered],
        "tasks": task_meta,
    }
    header = {"format": _FORMAT, "version": str(_VERSION),
              "npsfuse.meta": json.dumps(meta, allow_nan=False)}
    return _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def _read_meta(path: str | os.PathLike) -> dict[str, Any]:
    header = read_header(path, _FORMAT, "compressed", "is not a safetensors file")
    if header.get("version") != str(_VERSION):
        raise ValueError(f"{str(path)!r}: unsupported version {header.get('version')!r}")
    return json.loads(header["npsfuse.meta"])


def tasks(path: str | os.PathLike) -> list[str]:
    """The task names stored in a compressed file, in order."""
    return [t["name"] for t in _read_meta(path)["tasks"]]


def load_task_vector(
    path: str | os.PathLike, task: str, *args: Any, base: ModelLike | None = None
) -> StateDict:
    """τ of one task from a compressed file (dense, in the stored dtypes).

    Parameters
    ----------
    path
        The compressed file.
    task
        The task's name (:func:`tasks`).
    base
        Keyword only: when given, checked against the stored fingerprint
        (no model is built, so it is not positional; passing it as the third
        positional argument is deprecated).
    """
    if args:
        if len(args) > 1 or base is not None:
            raise TypeError("load_task_vector() takes path, task and the keyword base=")
        deprecated("compress.load_task_vector()", "base as the third positional argument",
                   "base=")
        base = args[0]
    from safetensors import safe_open

    meta = _read_meta(path)
    names = [t["name"] for t in meta["tasks"]]
    if task not in names:
        raise KeyError(f"{str(path)!r} has no task {task!r}; it holds: {', '.join(names)}")
    ti = names.index(task)
    if base is not None:
        check_base(load_state_dict(base, "base"), [t["name"] for t in meta["tensors"]],
                   meta["base_fingerprint"],
                   "the compressed file; it was made for another base model",
                   "the compressed file was made for another base model", "the base's")
    out: StateDict = {}
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        for i, t in enumerate(meta["tensors"]):
            shape, dtype = tuple(t["shape"]), _DTYPES[t["dtype"]]
            n = int(np.prod(shape, dtype=np.int64))
            packed = f.get_tensor(f"{ti}:{i}:mask").numpy()
            mask = torch.from_numpy(np.unpackbits(packed, count=n).astype(bool))
            flat = torch.zeros(n, dtype=dtype)
            vkey = f"{ti}:{i}:values"
            if vkey in keys:
                vals = f.get_tensor(vkey)
                if vals.numel() != int(mask.sum()):
                    raise ValueError(f"{str(path)!r} is corrupt: tensor {t['name']!r} of task "
                                     f"{task!r} has {vals.numel()} values for "
                                     f"{int(mask.sum())} mask bits")
                flat[mask] = vals
            out[t["name"]] = flat.reshape(shape)
    return out


def _is_compressed(x: Any) -> bool:
    """Whether ``x`` is the path of an npsfuse compressed file (reads its header only)."""
    if not isinstance(x, (str, os.PathLike)) or not Path(x).is_file():
        return False
    try:
        _read_meta(x)
    except (OSError, ValueError):
        return False
    return True


def load(base: ModelLike, path: str | os.PathLike, task: str, lam: float = 1.0) -> StateDict:
    """Rebuild θ₀ + λ·τ_task from a compressed file.

    Bit-identical to the :meth:`~npsfuse.nps.NPSResult.state_dict` of the
    saved result (same Go ``Apply`` on the same base-dtype τ).

    Parameters
    ----------
    base
        θ₀, the model the file was made for: the base first, then what is
        applied onto it, then λ, as :func:`npsfuse.nps.transfer`. The old
        order ``load(path, base, task, lam)`` still works (with a
        ``DeprecationWarning``) when the first argument is a compressed file.
    path
        The compressed file.
    task
        The task to rebuild (:func:`tasks`).
    lam
        λ, the scale of the task vector.

    Raises
    ------
    KeyError
        ``task`` is not in the file (the message lists those that are).
    ValueError
        ``base`` is not the model the file was made for (fingerprint), or
        the file is not a compressed npsfuse file.
    """
    if _is_compressed(base) and not _is_compressed(path):
        deprecated("compress.load()", "the order (path, base, task)", "(base, path, task)")
        base, path = path, base
    sd = load_state_dict(base, "base")
    tau = load_task_vector(path, task, base=sd)  # the covered tensors, in the file's order
    return _apply(sd, list(tau), [tau], [float(lam)])


def report(path: str | os.PathLike) -> dict[str, Any]:
    """Storage per task of a compressed file.

    Returns
    -------
    dict
        ``file_bytes`` (the file's size), ``tensors`` (how many are covered)
        and ``tasks``: task name → ``parameters`` (entries covered), ``kept``,
        ``density`` (kept / parameters), ``mask_bytes``, ``value_bytes``,
        ``bits_per_parameter`` ((mask + value bytes) · 8 / parameters) and
        ``keep`` / ``weights`` when the task came from an NPS result.
    """
    from safetensors import safe_open

    meta = _read_meta(path)
    out: dict[str, dict[str, Any]] = {}
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        for ti, t in enumerate(meta["tasks"]):
            mb = vb = 0
            for i in range(len(meta["tensors"])):
                sl = f.get_slice(f"{ti}:{i}:mask")
                mb += int(np.prod(sl.get_shape(), dtype=np.int64))
                vkey = f"{ti}:{i}:values"
                if vkey in keys:
                    size = _DTYPES[meta["tensors"][i]["dtype"]].itemsize
                    vb += int(np.prod(f.get_slice(vkey).get_shape(), dtype=np.int64)) * size
            n = int(t["parameters"])
            entry: dict[str, Any] = {
                "parameters": n, "kept": int(t["kept"]),
                "density": t["kept"] / n if n else 0.0,
                "mask_bytes": mb, "value_bytes": vb,
                "bits_per_parameter": 8 * (mb + vb) / n if n else 0.0,
            }
            out[t["name"]] = entry | {k: t[k] for k in ("keep", "weights") if k in t}
    return {"file_bytes": Path(path).stat().st_size, "tensors": len(meta["tensors"]),
            "tasks": out}
