"""The Go side of NPS-Pruning, behind handles: the decomposition and candidate
build (``gocore/nps``), the search session (``gocore/nps.Session``) and
θ₀ + Σ λ_i τ_i (``Apply``).

The session decides everything about a search (the start point first, the
optimizer's generations, best, history); the daemon's ``nps_search`` drives
the same Go object, so both doors give the same run bit for bit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .. import _core
from .._bridge import ArrowPack, check_tensor
from .._display import progress_bar
from .._state import StateDict
from ..merging import _check_shapes, _split
from ..optim import _Handle, _parse_float, _scores_json


def _prunable(base: StateDict, models: Sequence[StateDict]) -> list[str]:
    """Floating-point tensors with at least one element, in tensor-name order.

    Every door decomposes in name order, so a global top-k keeps ties at the
    cut in name order, as merge does.

    Integer/bool buffers must agree across models (``TypeError`` otherwise);
    they, and empty tensors, are taken from the base unchanged.
    """
    _check_shapes(base, models)
    names, _ = _split(base, models)
    return sorted(k for k in names if base[k].numel() > 0)


def _apply(
    base: StateDict,
    names: Sequence[str],
    taus: Sequence[Mapping[str, torch.Tensor]],
    lams: Sequence[float],
) -> StateDict:
    """θ₀ + Σ λ_i τ_i for ``names`` (Go ``Apply``; float32 arithmetic, the base's
    dtype), every other tensor of ``base`` unchanged. A τ lacking a name adds 0.
    """
    items: list[tuple[str, torch.Tensor]] = []
    outs: StateDict = {}
    zeros: dict[tuple[tuple[int, ...], torch.dtype], torch.Tensor] = {}
    for k in names:
        b = check_tensor(k, base[k])
        items.append((k, b))
        for i, tau in enumerate(taus):
            t = tau.get(k)
            if t is None:
                key = (tuple(b.shape), b.dtype)
                t = zeros.setdefault(key, torch.zeros(b.shape, dtype=b.dtype))
            elif tuple(t.shape) != tuple(b.shape):
                raise ValueError(
                    f"tensor {k!r} has shape {tuple(t.shape)} in task vector {i} "
                    f"but {tuple(b.shape)} in the base model"
                )
            items.append((f"{k} (tau {i})", check_tensor(k, t)))
        out = torch.empty(b.shape, dtype=b.dtype)
        outs[k] = out
        items.append((f"{k} (output)", out))
    if names:
        pack = ArrowPack(items)
        _core.call(
            _core.go.Apply,
            json.dumps([float(x) for x in lams]),
            len(names),
            len(taus),
            pack.arrays,
            pack.schemas,
        )
    return {k: outs.get(k, t) for k, t in base.items()}



class _Decomposition(_Handle):
    """The Go decomposition of the task vectors (a handle), and candidate builds."""

    _what = "the search"

    def __init__(
        self,
        base: StateDict,
        finetuned: StateDict,
        names: Sequence[str],
        *,
        subspaces: int,
        kind: str,
        rank: int,
        seed: int,
    ) -> None:
        items: list[tuple[str, torch.Tensor]] = []
        for k in names:
            items.append((k, check_tensor(k, base[k])))
            items.append((f"{k} (finetuned)", check_tensor(k, finetuned[k])))
        opts = {"subspaces": int(subspaces), "kind": kind, "rank": int(rank),
                "power_iters": 0, "oversample": 0, "seed": int(seed)}
        pack = ArrowPack(items)
        self._h = _core.call(_core.go.NPSDecompose, json.dumps(opts), len(names), pack.arrays,
                             pack.schemas)
        self.names = list(names)

    def build(
        self, weights: np.ndarray, density: float, scope: str, out: Mapping[str, torch.Tensor]
    ) -> int:
        """Write τ_NPS for ``weights`` ((M,) shared or (T, M) per tensor) into ``out``."""
        h = self._handle()
        w = np.asarray(weights, dtype=np.float64)
        spec = {"shared": w.tolist()} if w.ndim == 1 else {"per_tensor": w.tolist()}
        pack = ArrowPack([(k, out[k]) for k in self.names])
        return int(_core.call(_core.go.NPSBuild, h, json.dumps(spec), float(density),
                              scope == "global", len(self.names), pack.arrays, pack.schemas))


class _Session(_Handle):
    """The engine's search session (``gocore/nps.Session``) behind a handle.

    The first :meth:`ask` is the start point alone, scored as it is; every
    later one an optimizer generation (the optimizer starts from the start
    clipped into the box). Ties keep the first best, so the start wins ties.
    """

    _what = "the search"

    def __init__(self, handle: int, shape: tuple[int, ...]) -> None:
        self._h = handle
        self.shape = shape

    @classmethod
    def new(
        cls,
        start: np.ndarray,
        *,
        bounds: tuple[Any, Any],
        optimizer: str,
        popsize: int | None,
        seed: int,
        generations: int,
        options: Mapping[str, Any],
    ) -> _Session:
        d = start.size
        lo, hi = (np.broadcast_to(np.asarray(b, dtype=np.float64), (d,)).tolist() for b in bounds)
        cfg: dict[str, Any] = {"optimizer": optimizer, "start": start.ravel().tolist(),
                               "lo": lo, "hi": hi, "seed": int(seed),
                               "generations": int(generations), **dict(options)}
        if popsize is not None:
            cfg["popsize"] = int(popsize)
        return cls(_core.call(_core.go.NPSSessionNew, json.dumps(cfg)), start.shape)

    @classmethod
    def restore(cls, state: Mapping[str, Any], shape: tuple[int, ...]) -> _Session:
        return cls(_core.call(_core.go.NPSSessionRestore, json.dumps(state)), shape)

    def ask(self) -> np.ndarray:
        """The pending candidates, shape (count, *shape)."""
        raw = json.loads(_core.call(_core.go.NPSSessionAsk, self._handle()))
        return np.asarray(raw, dtype=np.float64).reshape((-1, *self.shape))

    def tell(self, scores: Sequence[float | None]) -> None:
        """Scores in ask order; None or non-finite marks a failed evaluation."""
        _core.call(_core.go.NPSSessionTell, self._handle(), _scores_json(scores))

    def info(self, key: str = "x") -> dict[str, Any]:
        """started, pending, generation, done, best_x, best_f, start_f,
        evaluations, failures, history (each generation's best candidate under ``key``)."""
        info = json.loads(_core.call(_core.go.NPSSessionInfo, self._handle()))
        for k in ("best_f", "start_f"):
            info[k] = None if info[k] is None else _parse_float(info[k])
        if info["best_x"] is not None:
            info["best_x"] = np.asarray(info["best_x"], dtype=np.float64).reshape(self.shape)
        info["history"] = [
            {"generation": h["generation"], "best": h["best"], "mean": h["mean"],
             key: None if h["x"] is None else np.reshape(h["x"], self.shape).tolist(),
             "failed": h["failed"], "best_so_far": h["best_so_far"]} for h in info["history"]]
        return info

    def state(self) -> dict[str, Any]:
        """The whole session (optimizer and RNG included) as a JSON-able dict."""
        return json.loads(_core.call(_core.go.NPSSessionState, self._handle()))


def _fmt(x: float | None) -> str:
    return "failed" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _postfix(info: Mapping[str, Any]) -> dict[str, Any]:
    """A progress bar's postfix from :meth:`_Session.info`: the newest generation's
    best so far and mean, and the evaluations."""
    h = info["history"][-1]
    return {"best": _fmt(h["best_so_far"]), "mean": _fmt(h["mean"]), "evals": info["evaluations"]}


def run_generations(step: Callable[[int], Any], done: int, total: int, *, progress: bool,
                    desc: str, postfix: Callable[[Any], Mapping[str, Any]] = _postfix) -> None:
    """The run loop of every session search (``nps.prune``, ``nps.fuse``,
    ``search_merge``): ``step(g)`` runs generation g (``done`` + 1 to ``total``,
    counted from 1) and saves any checkpoint; a tqdm bar over generations shows
    ``postfix(step's return value)``."""
    with progress_bar(total=total, disable=not progress, desc=desc, unit="gen",
                      leave=True) as bar:
        bar.update(done)
        for g in range(done + 1, total + 1):
            bar.set_postfix(**postfix(step(g)))
            bar.update(1)
