"""NPS-Pruning: slim a fine-tuned model's task vector by searched subspace weights.

NPS-Pruning (Du, Fang, Li et al., 2025; METHODS.md, "NPS-Pruning") splits
every tensor's task vector τ = θ_ft − θ₀ into M subspaces q_m with τ = Σ q_m
(SVD rank bands plus the residual for matrices, magnitude bands for 1-D
tensors), reweights them, τ' = Σ_m w_m q_m, keeps the top ``keep`` fraction
of |τ'| over the whole model, and searches w ∈ [lo, hi]^M with CMA-ES or
differential evolution to maximise the caller's validation metric of
θ₀ + τ_NPS. The decomposition, the candidate build and θ₀ + λτ run in the Go
kernels (``gocore/nps``); the search in ``gocore/search``.

**The start point is magnitude pruning.** With all weights 1, τ' = τ, so the
first candidate evaluated is plain global magnitude top-k of τ. The search
returns the best candidate it evaluated, the start included, so on the
validation metric NPS is never worse than magnitude top-k at the same
``keep`` (:attr:`NPSResult.start_score` holds that baseline's score).

Entry points: :func:`prune` (the whole search with a callback), :class:`Search`
(ask/tell for evaluation inside a training loop, resumable), :func:`transfer`
(θ₀ + λ·τ_NPS), :func:`fuse` (θ₀ + Σ λ_i τ_NPS,i, λ searched on request).
Compact storage of several results is :mod:`npsfuse.compress`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _core
from ._bridge import ArrowPack, check_tensor
from ._state import ModelLike, StateDict, load_state_dict
from .merging import _check_shapes, _split
from .optim import Optimizer, cosine_schedule

__all__ = [
    "FusionResult",
    "NPSResult",
    "Search",
    "fingerprint",
    "fuse",
    "prune",
    "transfer",
]

logger = logging.getLogger(__name__)

Evaluate = Callable[[StateDict], float]

#: Elements sampled per tensor by :func:`fingerprint`.
FINGERPRINT_SAMPLES = 4096

_RESULT_FORMAT = "npsfuse.nps_result"
_SEARCH_FORMAT = "npsfuse.nps_search"
_FORMAT_VERSION = 1
_KINDS = ("svd", "magnitude")
_SCOPES = ("global", "tensor")
_OPTIMIZER_OPTIONS = frozenset({"sigma0", "strategy", "schedule"})
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# ------------------------------------------------------------------ helpers --


def fingerprint(sd: Mapping[str, torch.Tensor], names: Iterable[str] | None = None) -> str:
    """A short hash identifying a model's weights, to catch a wrong base model.

    Covers, for each tensor in ``names`` (default: all) taken in sorted name
    order: its name, shape, dtype and element count, and the raw bytes of
    :data:`FINGERPRINT_SAMPLES` elements at evenly strided flat positions
    (index ⌊i·(n−1)/(s−1)⌋, so the first and last elements are included; all
    elements of smaller tensors). Hashed with BLAKE2b (16-byte digest).

    It does not read every byte: two models that differ only at unsampled
    positions get the same fingerprint. It does tell apart different
    checkpoints of one architecture (training changes essentially every
    entry) and a model cast to another dtype. Cost: O(#tensors · 4096).

    Parameters
    ----------
    sd
        Name → tensor.
    names
        The tensors to cover (each must be in ``sd``).

    Returns
    -------
    str
        32 hexadecimal digits.
    """
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(sd if names is None else names):
        t = sd[name].detach()
        flat = t.reshape(-1)
        n = flat.numel()
        h.update(f"{len(name)}:{name}|{tuple(t.shape)}|{t.dtype}|{n}|".encode())
        if n == 0:
            continue
        s = min(n, FINGERPRINT_SAMPLES)
        idx = torch.arange(s, dtype=torch.int64)
        if s < n:
            idx = idx * (n - 1) // (s - 1)
        sample = flat[idx].cpu().contiguous()
        if sample.dtype == torch.bool:
            sample = sample.to(torch.uint8)
        elif sample.element_size() in _INT_OF_SIZE:
            sample = sample.view(_INT_OF_SIZE[sample.element_size()])
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def _atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Run ``write(tmp)`` on a fresh temporary name next to ``path``, then rename it over
    ``path``.

    A crash leaves either the old file or the new one, never a partial file
    (the rename is atomic within a file system). The temporary file gets the
    usual permissions, as if ``write`` had created ``path`` itself.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"folder {str(parent)!r} does not exist")
    tmp = parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _none_to_neginf(x: float | None) -> float:
    return -math.inf if x is None else float(x)


def _prunable(base: StateDict, models: Sequence[StateDict]) -> list[str]:
    """Floating-point tensors with at least one element, in the base's order.

    Integer/bool buffers must agree across models (``TypeError`` otherwise);
    they, and empty tensors, are taken from the base unchanged.
    """
    _check_shapes(base, models)
    names, _ = _split(base, models)
    return [k for k in names if base[k].numel() > 0]


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


def _check_keep(keep: float) -> float:
    keep = float(keep)
    if not (0.0 < keep <= 1.0):
        raise ValueError(f"keep must lie in (0, 1], got {keep}")
    return keep


def _check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (lo, hi) of numbers, got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"bounds must be finite, got ({lo}, {hi})")
    if lo >= hi:
        raise ValueError(f"bounds are inverted or empty: lo={lo} must be < hi={hi}")
    return lo, hi


def _check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    opts = dict(options or {})
    unknown = sorted(set(opts) - _OPTIMIZER_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown optimizer option(s) {', '.join(unknown)}; valid: "
            f"{', '.join(sorted(_OPTIMIZER_OPTIONS))}"
        )
    return opts


def _user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning from the caller point at user code."""
    pkg = os.path.dirname(os.path.abspath(__file__)) + os.sep
    f = sys._getframe(1)
    level = 1
    while f.f_back is not None and os.path.abspath(f.f_code.co_filename).startswith(pkg):
        f = f.f_back
        level += 1
    return level


class _Failures:
    """Scores failed evaluations −inf, warning once per kind of failure."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def _warn(self, kind: str, msg: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(
                msg + "; the candidate is scored -inf and the search goes on "
                "(further failures are counted, not reported)",
                RuntimeWarning,
                stacklevel=_user_stacklevel(),
            )

    def value(self, v: Any) -> float:
        """A user-reported score as a float, −inf (with a warning) when not finite."""
        f = math.nan if v is None else float(v)
        if not math.isfinite(f):
            self._warn("score", f"a score was {v}")
            return -math.inf
        return f

    def evaluate(self, evaluate: Evaluate, sd: StateDict) -> float:
        """``evaluate(sd)`` as a float; an exception or a non-number is scored −inf."""
        try:
            f = float(evaluate(sd))
        except Exception as exc:  # user code may fail in any way; the search goes on
            logger.debug("evaluate failed", exc_info=True)
            self._warn("error", f"evaluate raised {type(exc).__name__}: {exc}")
            return -math.inf
        if not math.isfinite(f):
            self._warn("score", f"evaluate returned {f}")
            return -math.inf
        return f


# ------------------------------------------------------------- search core --


class _Core:
    """The optimiser, the unweighted start, history and the best point.

    The first ask returns the start point alone; it is evaluated but not told
    to the optimiser (whose mean/individual 0 is the start clipped into the
    box). Every later ask is one optimiser generation. The best point is the
    first one with the highest score, so ties keep the start.
    """

    def __init__(
        self,
        *,
        start: np.ndarray,
        bounds: tuple[float, float],
        optimizer: str,
        popsize: int | None,
        seed: int,
        generations: int,
        options: Mapping[str, Any] | None,
        opt: Optimizer | None = None,
    ) -> None:
        self.start = np.asarray(start, dtype=np.float64)
        self.shape = self.start.shape
        if opt is None:
            opts = _check_options(options)
            if optimizer == "de" and "schedule" not in opts:
                opts["schedule"] = cosine_schedule(max(generations, 1))
            lo, hi = bounds
            opt = Optimizer(
                optimizer,
                x0=np.clip(self.start.ravel(), lo, hi),
                bounds=(lo, hi),
                popsize=popsize,
                seed=seed,
                **opts,
            )
        self.opt = opt
        self.started = False
        self.asked: np.ndarray | None = None
        self.history: list[dict[str, Any]] = []
        self.best_x: np.ndarray | None = None
        self.best_f = -math.inf
        self.start_f: float | None = None
        self.evals = 0
        self.failures = 0

    @property
    def generation(self) -> int:
        return len(self.history)

    def points(self) -> np.ndarray:
        """The pending candidates, shape (count, *start.shape)."""
        if self.asked is None:
            if not self.started:
                self.asked = self.start[None].copy()
            else:
                self.asked = self.opt.ask().reshape((-1, *self.shape))
        return self.asked.copy()

    def tell(self, scores: Sequence[float], key: str) -> None:
        if self.asked is None:
            raise RuntimeError("tell() needs a pending ask(): call ask() first")
        if len(scores) != len(self.asked):
            raise ValueError(f"{len(scores)} scores for {len(self.asked)} candidates")
        pts = self.asked
        if not self.started:
            self.start_f = scores[0]
            self.started = True
        else:
            self.opt.tell(list(scores))
            finite = [s for s in scores if math.isfinite(s)]
            gi = int(np.argmax(scores)) if finite else None
            entry: dict[str, Any] = {
                "generation": len(self.history) + 1,
                "best": max(finite) if finite else None,
                "mean": float(np.mean(finite)) if finite else None,
                key: pts[gi].tolist() if gi is not None else None,
                "failed": len(scores) - len(finite),
            }
            self.history.append(entry)
        for x, f in zip(pts, scores, strict=True):
            if f > self.best_f:
                self.best_f, self.best_x = f, x.copy()
        if self.history:
            self.history[-1]["best_so_far"] = _finite_or_none(self.best_f)
        self.evals += len(scores)
        self.failures += sum(1 for s in scores if not math.isfinite(s))
        self.asked = None

    def state(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "asked": self.asked is not None,
            "history": self.history,
            "best_x": None if self.best_x is None else self.best_x.tolist(),
            "best_f": _finite_or_none(self.best_f),
            "start_f": _finite_or_none(self.start_f) if self.started else None,
            "evals": self.evals,
            "failures": self.failures,
            "optimizer": self.opt.state(),
        }

    @classmethod
    def restore(cls, start: np.ndarray, s: Mapping[str, Any]) -> _Core:
        opt = Optimizer.restore(s["optimizer"])
        core = cls(start=start, bounds=(0.0, 1.0), optimizer=opt.optimizer, popsize=None,
                   seed=0, generations=1, options=None, opt=opt)
        core.started = bool(s["started"])
        core.history = [dict(h) for h in s["history"]]
        core.best_x = None if s["best_x"] is None else np.asarray(s["best_x"], dtype=np.float64)
        core.best_f = _none_to_neginf(s["best_f"])
        core.start_f = _none_to_neginf(s["start_f"]) if core.started else None
        core.evals = int(s["evals"])
        core.failures = int(s["failures"])
        if s["asked"]:
            core.points()
        return core

    def close(self) -> None:
        self.opt.close()


# ------------------------------------------------------------ decomposition --


class _Decomposition:
    """The Go decomposition of the task vectors (a handle), and candidate builds."""

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
        self._h = 0
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
        self.info = json.loads(_core.call(_core.go.NPSInfo, self._h))

    def build(
        self, weights: np.ndarray, keep: float, scope: str, out: Mapping[str, torch.Tensor]
    ) -> int:
        """Write τ_NPS for ``weights`` ((M,) shared or (T, M) per tensor) into ``out``."""
        if not self._h:
            raise ValueError("the search is closed")
        w = np.asarray(weights, dtype=np.float64)
        spec = {"shared": w.tolist()} if w.ndim == 1 else {"per_tensor": w.tolist()}
        pack = ArrowPack([(k, out[k]) for k in self.names])
        return int(_core.call(_core.go.NPSBuild, self._h, json.dumps(spec), float(keep),
                              scope == "global", len(self.names), pack.arrays, pack.schemas))

    def close(self) -> None:
        h, self._h = getattr(self, "_h", 0), 0
        if h:
            try:
                _core.go.Free(h)
            except Exception:  # pragma: no cover - interpreter shutdown
                pass

    def __del__(self) -> None:
        self.close()


# ------------------------------------------------------------------ results --


def _plot_history(
    path: str | os.PathLike,
    history: Sequence[Mapping[str, Any]],
    start_score: float | None,
    key: str,
    label: str,
    title: str,
) -> Path:
    """PNG: fitness per generation (top) and searched values per generation (bottom)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    gens = [h["generation"] for h in history]

    def series(name: str) -> list[float]:
        return [math.nan if h.get(name) is None else float(h[name]) for h in history]

    ax1.plot(gens, series("best"), "o-", ms=3, label="best of generation")
    ax1.plot(gens, series("mean"), "-", alpha=0.7, label="mean of generation")
    ax1.plot(gens, series("best_so_far"), "--", label="best so far")
    if start_score is not None and math.isfinite(start_score):
        ax1.axhline(start_score, color="grey", lw=1, ls=":", label="start (all weights 1)")
    ax1.set_ylabel("validation score")
    ax1.set_title(title)
    ax1.legend(loc="lower right", fontsize="small")
    rows = [np.asarray(h[key], dtype=np.float64) if h.get(key) is not None else None
            for h in history]
    width = next((r.shape[-1] for r in rows if r is not None), 0)
    mat = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        if r is not None:
            mat[i] = r.reshape(-1, width).mean(axis=0)
    for m in range(width):
        ax2.plot(gens, mat[:, m], "-", label=f"{label} {m + 1}")
    ax2.set_xlabel("generation")
    ax2.set_ylabel(label + (" (mean over tensors)" if rows and rows[0] is not None
                            and rows[0].ndim > 1 else ""))
    if width:
        ax2.legend(loc="upper left", fontsize="x-small", ncol=min(width, 4))
    out = Path(path)
    fig.savefig(out, format="png", dpi=110)
    return out


class NPSResult:
    """The outcome of an NPS-Pruning search.

    Attributes
    ----------
    weights : numpy.ndarray
        The best subspace weights: shape (M,) shared by all tensors, or
        (T, M) with ``per_layer`` (row i for ``tensor_names[i]``).
    keep : float
        Fraction of task-vector entries kept.
    score : float
        The best validation score found (``evaluate`` of θ₀ + τ_NPS).
    start_score : float or None
        Score of the start point, all weights 1, which is plain global
        magnitude top-k of τ (None if the search never evaluated it).
    history : list of dict
        One entry per search generation: ``generation`` (1-based), ``best``
        and ``mean`` (over the candidates that did not fail; None if all
        failed), ``weights`` (the generation's best candidate), ``best_so_far``
        and ``failed`` (candidates scored −inf).
    kept : int
        Entries of τ_NPS kept (⌊keep·n⌋ over all pruned entries for the
        global scope).
    tensor_names : list of str
        The pruned tensors (floating point, non-empty), in the base's order.
    config : dict
        subspaces, kind, rank, scope, optimizer, popsize, bounds, per_layer,
        seed, generations.
    evaluations, failures : int
        Candidates evaluated, and how many of those were scored −inf.
    base_fingerprint : str
        :func:`fingerprint` of the base over ``tensor_names``.
    """

    def __init__(
        self,
        *,
        tau: StateDict,
        weights: np.ndarray,
        keep: float,
        score: float,
        start_score: float | None,
        history: list[dict[str, Any]],
        kept: int,
        config: dict[str, Any],
        evaluations: int,
        failures: int,
        base_fingerprint: str,
        base: StateDict | None = None,
    ) -> None:
        self._tau = tau
        self.weights = np.asarray(weights, dtype=np.float64)
        self.keep = float(keep)
        self.score = float(score)
        self.start_score = start_score
        self.history = history
        self.kept = int(kept)
        self.tensor_names = list(tau)
        self.config = config
        self.evaluations = int(evaluations)
        self.failures = int(failures)
        self.base_fingerprint = base_fingerprint
        self._base = base

    def __repr__(self) -> str:
        w = np.array2string(self.weights, precision=3, threshold=16)
        return (f"NPSResult(keep={self.keep}, score={self.score:.6g}, "
                f"start_score={self.start_score}, weights={w})")

    def task_vector(self) -> StateDict:
        """τ_NPS: the pruned, reweighted task vector, in the base's dtypes.

        Dense tensors (the dropped entries are zeros) for the pruned tensors
        only; a copy, so changing it does not change the result.
        """
        return {k: t.clone() for k, t in self._tau.items()}

    def _resolve_base(self, base: ModelLike | None) -> StateDict:
        if base is None:
            if self._base is None:
                raise ValueError(
                    "this result does not hold its base model (it was loaded from a file): "
                    "pass base=..."
                )
            return self._base
        sd = load_state_dict(base, "base")
        missing = [k for k in self.tensor_names if k not in sd]
        if missing:
            raise ValueError(f"the base model lacks tensor {missing[0]!r} of this result")
        if fingerprint(sd, self.tensor_names) != self.base_fingerprint:
            raise ValueError(
                "this base model is not the one the result was computed from "
                "(its fingerprint differs: names, shapes, dtypes or sampled values)"
            )
        return sd

    def state_dict(self, lam: float = 1.0, base: ModelLike | None = None) -> StateDict:
        """θ₀ + λ·τ_NPS, in the base's dtypes (Go ``Apply``, float32 arithmetic).

        Parameters
        ----------
        lam
            λ, the scale of the task vector.
        base
            θ₀; default the base the result was computed from. Checked
            against :attr:`base_fingerprint`.

        Returns
        -------
        dict[str, torch.Tensor]
            Every tensor of the base, in its order; tensors that were not
            pruned (integer buffers, empty tensors) are the base's own.

        Notes
        -----
        Computed from τ_NPS in the base's dtype, so a model rebuilt from
        :mod:`npsfuse.compress` is bit-identical to this one.
        """
        if not math.isfinite(lam):
            raise ValueError(f"lam must be finite, got {lam}")
        sd = self._resolve_base(base)
        return _apply(sd, self.tensor_names, [self._tau], [float(lam)])

    def plot(self, path: str | os.PathLike) -> Path:
        """Write a PNG: fitness per generation, and band weights per generation.

        Needs matplotlib (any backend; pyplot is not used).
        """
        return _plot_history(path, self.history, self.start_score, "weights", "w",
                             f"NPS-Pruning, keep={self.keep:g}")

    def _meta(self) -> dict[str, Any]:
        return {
            "weights": self.weights.tolist(),
            "keep": self.keep,
            "score": _finite_or_none(self.score),
            "start_score": _finite_or_none(self.start_score),
            "history": self.history,
            "kept": self.kept,
            "tensor_names": self.tensor_names,
            "config": self.config,
            "evaluations": self.evaluations,
            "failures": self.failures,
            "base_fingerprint": self.base_fingerprint,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to one safetensors file, atomically.

        The file holds τ_NPS (dense, base dtype) under the tensor names and
        the rest as JSON in the safetensors metadata (``npsfuse.meta``), so it
        is also an ordinary task-vector checkpoint. For compact storage of
        several results use :func:`npsfuse.compress.save`.
        """
        from safetensors.torch import save_file

        meta = {"format": _RESULT_FORMAT, "version": str(_FORMAT_VERSION),
                "npsfuse.meta": json.dumps(self._meta(), allow_nan=False)}
        tensors = {k: t.contiguous() for k, t in self._tau.items()}
        return _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike, base: ModelLike | None = None) -> NPSResult:
        """Read a file written by :meth:`save`.

        Parameters
        ----------
        path
            The file.
        base
            Optionally θ₀, checked against the stored fingerprint and kept for
            :meth:`state_dict`.

        Raises
        ------
        ValueError
            When the file is not an NPS result, or ``base`` is another model.
        """
        from safetensors import safe_open

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no such file: {str(p)!r}")
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != _RESULT_FORMAT:
                    raise ValueError(f"{str(p)!r} is not an npsfuse NPS result file")
                info = json.loads(meta["npsfuse.meta"])
                tau = {k: f.get_tensor(k) for k in info["tensor_names"]}
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"{str(p)!r} is not a readable NPS result file: {exc}") from None
        res = cls(
            tau=tau,
            weights=np.asarray(info["weights"], dtype=np.float64),
            keep=info["keep"],
            score=_none_to_neginf(info["score"]),
            start_score=info["start_score"],
            history=info["history"],
            kept=info["kept"],
            config=info["config"],
            evaluations=info["evaluations"],
            failures=info["failures"],
            base_fingerprint=info["base_fingerprint"],
        )
        if base is not None:
            res._base = res._resolve_base(base)
        return res


# ------------------------------------------------------------------- search --


class Search:
    """NPS-Pruning as ask/tell, for evaluation that lives in your own loop.

    Parameters
    ----------
    base, finetuned
        θ₀ and θ_ft: state dicts, ``nn.Module`` s or safetensors checkpoints.
    keep
        Fraction r ∈ (0, 1] of task-vector entries kept.
    subspaces
        M ≥ 1, subspaces per tensor.
    kind
        ``"svd"`` (rank bands + residual for matrices, magnitude bands for 1-D
        tensors) or ``"magnitude"`` (magnitude bands everywhere).
    optimizer
        ``"cma"`` (CMA-ES) or ``"de"`` (differential evolution; default
        schedule: cosine F and CR 0.9 → 0.1 over ``generations``).
    generations
        The planned number of search generations (sets :attr:`done` and the
        DE schedule); asking beyond it is allowed.
    popsize
        Candidates per generation (default CMA-ES 4 + ⌊3 ln d⌋, DE 10 d, with
        d = M, or T·M with ``per_layer``).
    bounds
        ``(lo, hi)`` of every weight, lo < hi.
    per_layer
        Give each *tensor* (what "layer" means here: every floating-point
        tensor of the state dict, biases and norms included) its own M
        weights, d = T·M, instead of one set shared by all.
    scope
        ``"global"`` (METHODS default): the top-k ranks all tensors together;
        ``"tensor"``: ⌊keep·n⌋ per tensor.
    rank
        SVD rank R (default 2^(M−2), the top edge of the last band).
    seed
        Seeds the randomized SVD and the optimiser.
    optimizer_options
        Passed to :class:`npsfuse.optim.Optimizer` (``sigma0``, ``strategy``,
        ``schedule``).

    Notes
    -----
    The first :meth:`ask` returns one candidate, the start point (all weights
    1 = global magnitude top-k of τ); every later one a generation of the
    optimiser (for DE the first of those is its initial population: the
    start point and popsize − 1 uniform draws). :meth:`state` captures
    everything but the decomposition, which :meth:`resume` recomputes
    (deterministic per seed), so a resumed search continues exactly as the
    uninterrupted one would. Go memory: 8 bytes per
    pruned parameter plus the SVD factors. Free it with :meth:`close` (or
    ``with``; garbage collection also does).
    """

    def __init__(
        self,
        base: ModelLike,
        finetuned: ModelLike,
        *,
        keep: float = 0.1,
        subspaces: int = 8,
        kind: str = "svd",
        optimizer: str = "cma",
        generations: int = 30,
        popsize: int | None = None,
        bounds: tuple[float, float] = (0.0, 2.0),
        per_layer: bool = False,
        scope: str = "global",
        rank: int | None = None,
        seed: int = 0,
        optimizer_options: Mapping[str, Any] | None = None,
        _state: Mapping[str, Any] | None = None,
    ) -> None:
        self._dec: _Decomposition | None = None
        self._core: _Core | None = None
        keep = _check_keep(keep)
        if isinstance(subspaces, bool) or int(subspaces) != subspaces or subspaces < 1:
            raise ValueError(f"subspaces must be an integer >= 1, got {subspaces}")
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
        if scope not in _SCOPES:
            raise ValueError(f"scope must be one of {', '.join(_SCOPES)}, got {scope!r}")
        if optimizer not in ("cma", "de"):
            raise ValueError(f"unknown optimizer {optimizer!r}; valid: cma, de")
        if int(generations) < 0:
            raise ValueError(f"generations must be >= 0, got {generations}")
        if popsize is not None and int(popsize) < 2:
            raise ValueError(f"popsize must be at least 2, got {popsize}")
        if rank is not None and int(rank) < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        lo, hi = _check_bounds(bounds)
        _check_options(optimizer_options)
        self._base = load_state_dict(base, "base")
        ft = load_state_dict(finetuned, "finetuned")
        self.names = _prunable(self._base, [ft])
        if not self.names:
            raise ValueError("the models have no non-empty floating-point tensor to prune")
        self.config: dict[str, Any] = {
            "keep": keep, "subspaces": int(subspaces), "kind": kind, "optimizer": optimizer,
            "generations": int(generations), "popsize": None if popsize is None else int(popsize),
            "bounds": [lo, hi], "per_layer": bool(per_layer), "scope": scope,
            "rank": None if rank is None else int(rank), "seed": int(seed),
            "optimizer_options": dict(optimizer_options or {}),
        }
        self.fingerprints = {"base": fingerprint(self._base, self.names),
                             "finetuned": fingerprint(ft, self.names)}
        if _state is not None and dict(_state["fingerprints"]) != self.fingerprints:
            which = [k for k in ("base", "finetuned")
                     if _state["fingerprints"][k] != self.fingerprints[k]]
            raise ValueError(
                f"the {' and '.join(which)} model(s) differ from those of the saved search "
                "(fingerprint mismatch)"
            )
        self._dec = _Decomposition(self._base, ft, self.names, subspaces=int(subspaces),
                                   kind=kind, rank=rank or 0, seed=int(seed))
        self._tau = {k: torch.empty(self._base[k].shape, dtype=self._base[k].dtype)
                     for k in self.names}
        m = int(subspaces)
        start = np.ones((len(self.names), m) if per_layer else (m,))
        if _state is None:
            self._core = _Core(start=start, bounds=(lo, hi), optimizer=optimizer,
                               popsize=popsize, seed=int(seed), generations=int(generations),
                               options=optimizer_options)
        else:
            self._core = _Core.restore(start, _state["core"])
        self._failures = _Failures()

    # -- ask/tell --------------------------------------------------------------

    def _c(self) -> _Core:
        if self._core is None:
            raise ValueError("the search is closed")
        return self._core

    def candidates(self) -> np.ndarray:
        """The pending candidates' weights, shape (count, M) or (count, T, M).

        Like :meth:`ask` without building the models; use with :meth:`build`
        to hold one candidate model in memory at a time.
        """
        return self._c().points()

    def build(self, weights: np.ndarray | Sequence[float]) -> StateDict:
        """θ₀ + τ_NPS for one weight vector ((M,), or (T, M) with ``per_layer``).

        A fresh state dict in the base's dtypes (integer buffers are the
        base's own tensors).
        """
        w = np.asarray(weights, dtype=np.float64)
        want = self._c().shape
        if w.shape != want:
            raise ValueError(f"weights must have shape {want}, got {w.shape}")
        assert self._dec is not None
        self._dec.build(w, self.config["keep"], self.config["scope"], self._tau)
        return _apply(self._base, self.names, [self._tau], [1.0])

    def ask(self) -> list[StateDict]:
        """The candidate models to evaluate: a list of state dicts θ₀ + τ_NPS.

        The first call returns only the start point (magnitude top-k). Calling
        ``ask`` again before :meth:`tell` returns the same candidates. Memory:
        one model per candidate (see :meth:`candidates` for less).
        """
        return [self.build(w) for w in self.candidates()]

    def tell(self, scores: Sequence[float | None]) -> None:
        """Report the candidates' scores (higher is better), in :meth:`ask` order.

        ``None``, NaN and ±inf mark failed candidates (scored −inf, with one
        warning per search).
        """
        core = self._c()
        vals = []
        for v in scores:
            vals.append(self._failures.value(v))
        core.tell(vals, "weights")

    def _evaluate_pending(self, evaluate: Evaluate) -> None:
        """Evaluate the pending candidates one model at a time and tell the scores."""
        scores = []
        for w in self.candidates():
            scores.append(self._failures.evaluate(evaluate, self.build(w)))
        self._c().tell(scores, "weights")

    # -- progress ---------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Completed search generations (the start point is not one)."""
        return self._c().generation

    @property
    def done(self) -> bool:
        """Whether the planned ``generations`` have run."""
        c = self._c()
        return c.started and c.generation >= self.config["generations"]

    @property
    def history(self) -> list[dict[str, Any]]:
        """Per generation: best, mean, weights, best_so_far, failed (see NPSResult)."""
        return [dict(h) for h in self._c().history]

    @property
    def best(self) -> tuple[np.ndarray | None, float]:
        """The best weights evaluated so far and their score (None, −inf before any)."""
        c = self._c()
        return (None if c.best_x is None else c.best_x.copy()), c.best_f

    def result(self) -> NPSResult:
        """The best candidate so far as an :class:`NPSResult`.

        Raises
        ------
        RuntimeError
            When no candidate has been evaluated successfully.
        """
        c = self._c()
        if c.best_x is None:
            raise RuntimeError(
                "no candidate has a finite score yet"
                + (f" ({c.failures} evaluations failed)" if c.failures else "")
            )
        assert self._dec is not None
        tau = {k: torch.empty(self._base[k].shape, dtype=self._base[k].dtype)
               for k in self.names}
        kept = self._dec.build(c.best_x, self.config["keep"], self.config["scope"], tau)
        cfg = {k: v for k, v in self.config.items() if k != "keep"}
        return NPSResult(
            tau=tau, weights=c.best_x, keep=self.config["keep"], score=c.best_f,
            start_score=c.start_f, history=self.history, kept=kept, config=cfg,
            evaluations=c.evals, failures=c.failures,
            base_fingerprint=self.fingerprints["base"], base=self._base,
        )

    # -- persistence --------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to continue this search, as a JSON-serialisable dict.

        Config, model fingerprints, optimiser state (RNG and any pending ask
        included), history and the best point; not the models or the
        decomposition. Safe to take at any time, also between ask and tell.
        """
        return {
            "format": _SEARCH_FORMAT,
            "version": _FORMAT_VERSION,
            "config": dict(self.config),
            "fingerprints": dict(self.fingerprints),
            "core": self._c().state(),
        }

    @classmethod
    def resume(
        cls, state: Mapping[str, Any] | str, base: ModelLike, finetuned: ModelLike
    ) -> Search:
        """Continue a search from :meth:`state` (a dict or its JSON text).

        The decomposition is recomputed from ``base`` and ``finetuned``, which
        must be the models of the saved search (checked by fingerprint).

        Raises
        ------
        ValueError
            A malformed state, or other models.
        """
        if isinstance(state, str):
            state = json.loads(state)
        if not isinstance(state, Mapping) or state.get("format") != _SEARCH_FORMAT:
            raise ValueError("not a saved NPS search state (format field missing or wrong)")
        if state.get("version") != _FORMAT_VERSION:
            raise ValueError(f"unsupported NPS search state version {state.get('version')!r}")
        cfg = dict(state["config"])
        return cls(
            base, finetuned, keep=cfg["keep"], subspaces=cfg["subspaces"], kind=cfg["kind"],
            optimizer=cfg["optimizer"], generations=cfg["generations"], popsize=cfg["popsize"],
            bounds=tuple(cfg["bounds"]), per_layer=cfg["per_layer"], scope=cfg["scope"],
            rank=cfg["rank"], seed=cfg["seed"], optimizer_options=cfg["optimizer_options"],
            _state=state,
        )

    def close(self) -> None:
        """Free the Go decomposition and optimiser. Idempotent."""
        if self._dec is not None:
            self._dec.close()
            self._dec = None
        if self._core is not None:
            self._core.close()
            self._core = None

    def __enter__(self) -> Search:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="gen", leave=True)


def _fmt(x: float | None) -> str:
    return "failed" if x is None or not math.isfinite(x) else f"{x:.4g}"


def prune(
    base: ModelLike,
    finetuned: ModelLike,
    evaluate: Evaluate,
    *,
    keep: float = 0.1,
    subspaces: int = 8,
    kind: str = "svd",
    optimizer: str = "cma",
    generations: int = 30,
    popsize: int | None = None,
    bounds: tuple[float, float] = (0.0, 2.0),
    per_layer: bool = False,
    scope: str = "global",
    rank: int | None = None,
    seed: int = 0,
    progress: bool = True,
    optimizer_options: Mapping[str, Any] | None = None,
) -> NPSResult:
    """NPS-Pruning: search subspace weights that maximise ``evaluate``.

    Parameters
    ----------
    base, finetuned
        θ₀ and θ_ft (state dicts, ``nn.Module`` s or safetensors checkpoints).
    evaluate
        ``evaluate(state_dict) -> float``, higher is better (e.g. validation
        accuracy); called once for the start point and ``generations ×
        popsize`` times after. Each call gets a fresh state dict. A call that
        raises, or returns NaN/±inf, scores −inf (one ``RuntimeWarning`` per
        kind of failure; the count is in :attr:`NPSResult.failures`).
    keep, subspaces, kind, optimizer, popsize, bounds, per_layer, scope, rank, seed,
    optimizer_options
        See :class:`Search`. ``per_layer`` means per *tensor*.
    generations
        Search generations after the start point.
    progress
        Show a tqdm bar over generations (best/mean in the postfix).

    Returns
    -------
    NPSResult
        The best candidate evaluated. The start point (all weights 1) is
        global magnitude top-k of τ, so ``result.score >=
        result.start_score``: never worse than magnitude pruning on the
        validation metric.

    Raises
    ------
    ValueError
        keep outside (0, 1], subspaces < 1, bounds inverted, unknown kind,
        optimizer or scope, models that do not match.
    RuntimeError
        When every evaluation failed.
    """
    with Search(base, finetuned, keep=keep, subspaces=subspaces, kind=kind,
                optimizer=optimizer, generations=generations, popsize=popsize, bounds=bounds,
                per_layer=per_layer, scope=scope, rank=rank, seed=seed,
                optimizer_options=optimizer_options) as s:
        s._evaluate_pending(evaluate)
        with _progress(generations, progress, f"NPS keep={s.config['keep']:g}") as bar:
            while not s.done:
                s._evaluate_pending(evaluate)
                h = s.history[-1]
                bar.set_postfix(best=_fmt(h["best_so_far"]), mean=_fmt(h["mean"]))
                bar.update(1)
        return s.result()


def transfer(base: ModelLike, result: NPSResult | str | os.PathLike, lam: float = 1.0) -> StateDict:
    """θ₀ + λ·τ_NPS: apply a pruned task vector to ``base``.

    ``result`` is an :class:`NPSResult` or the path of one saved with
    :meth:`NPSResult.save`; ``base`` must be the model it was computed from
    (checked by fingerprint).
    """
    if not isinstance(result, NPSResult):
        result = NPSResult.load(result)
    return result.state_dict(lam, base=base)


class FusionResult:
    """The outcome of :func:`fuse`.

    Attributes
    ----------
    lambdas : numpy.ndarray
        λ_i, one per task vector.
    score, start_score : float or None
        Validation score of the chosen λ, and of the start λ (None without
        ``evaluate``).
    history : list of dict
        Per generation: best, mean, lambdas, best_so_far, failed.
    """

    def __init__(
        self,
        base: StateDict,
        names: list[str],
        taus: list[StateDict],
        lambdas: np.ndarray,
        score: float | None,
        start_score: float | None,
        history: list[dict[str, Any]],
    ) -> None:
        self._base, self._names, self._taus = base, names, taus
        self.lambdas = np.asarray(lambdas, dtype=np.float64)
        self.score = score
        self.start_score = start_score
        self.history = history

    def __repr__(self) -> str:
        return f"FusionResult(lambdas={self.lambdas.tolist()}, score={self.score})"

    def state_dict(self) -> StateDict:
        """θ₀ + Σ λ_i τ_i in the base's dtypes (Go ``Apply``, float32 arithmetic)."""
        return _apply(self._base, self._names, self._taus, self.lambdas.tolist())

    def plot(self, path: str | os.PathLike) -> Path:
        """Write a PNG: fitness and λ per generation."""
        return _plot_history(path, self.history, self.start_score, "lambdas", "λ", "fusion")


def _as_tau(r: NPSResult | Mapping[str, torch.Tensor] | str | os.PathLike,
            base: StateDict, i: int) -> StateDict:
    if isinstance(r, (str, os.PathLike)):
        r = NPSResult.load(r)
    if isinstance(r, NPSResult):
        r._resolve_base(base)
        return r._tau
    if isinstance(r, Mapping):
        tau = load_state_dict(r, f"task vector {i}")
        extra = [k for k in tau if k not in base]
        if extra:
            raise ValueError(f"task vector {i} has tensor {extra[0]!r}, which the base lacks")
        return tau
    raise TypeError(f"result {i} is a {type(r).__name__}; pass an NPSResult, a path, or a "
                    "task-vector state dict")


def fuse(
    base: ModelLike,
    results: Sequence[NPSResult | Mapping[str, torch.Tensor] | str | os.PathLike],
    evaluate: Evaluate | None = None,
    lambdas: Sequence[float] | None = None,
    *,
    optimizer: str = "cma",
    generations: int = 30,
    popsize: int | None = None,
    bounds: tuple[float, float] = (0.0, 2.0),
    seed: int = 0,
    progress: bool = True,
    optimizer_options: Mapping[str, Any] | None = None,
) -> FusionResult:
    """Fuse task vectors: θ₀ + Σ λ_i τ_NPS,i, with λ searched when ``evaluate`` is given.

    Parameters
    ----------
    base
        θ₀ (checked against each :class:`NPSResult`'s fingerprint).
    results
        :class:`NPSResult` s, paths of saved ones, or task-vector state dicts
        (name → τ, any subset of the base's floating-point tensors).
    evaluate
        ``evaluate(state_dict) -> float`` (higher is better). Without it the
        λ are ``lambdas`` (default all 1) and nothing is searched.
    lambdas
        The λ (without ``evaluate``) or the search's start point (with it;
        evaluated first, so the result is never worse on ``evaluate``).
    optimizer, generations, popsize, bounds, seed, progress, optimizer_options
        As in :func:`prune`; the search is over λ ∈ [lo, hi]^k.

    Returns
    -------
    FusionResult
        ``.lambdas``, ``.score``, ``.history`` and ``.state_dict()``.
    """
    if not isinstance(results, Sequence) or isinstance(results, (str, bytes)) or not results:
        raise ValueError("results must be a non-empty list")
    sd = load_state_dict(base, "base")
    names = [k for k, t in sd.items()
             if (t.is_floating_point() or t.is_complex()) and t.numel() > 0]
    taus = [_as_tau(r, sd, i) for i, r in enumerate(results)]
    k = len(taus)
    start = np.ones(k) if lambdas is None else np.asarray([float(x) for x in lambdas])
    if start.shape != (k,):
        raise ValueError(f"{start.size} lambdas given for {k} results")
    if not np.all(np.isfinite(start)):
        raise ValueError(f"lambdas must be finite, got {start.tolist()}")
    if evaluate is None:
        return FusionResult(sd, names, taus, start, None, None, [])
    lo, hi = _check_bounds(bounds)
    if optimizer not in ("cma", "de"):
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: cma, de")
    if int(generations) < 0:
        raise ValueError(f"generations must be >= 0, got {generations}")
    core = _Core(start=start, bounds=(lo, hi), optimizer=optimizer, popsize=popsize,
                 seed=int(seed), generations=int(generations), options=optimizer_options)
    fails = _Failures()
    try:

        def run() -> None:
            scores = []
            for p in core.points():
                scores.append(fails.evaluate(evaluate, _apply(sd, names, taus, p.tolist())))
            core.tell(scores, "lambdas")

        run()
        with _progress(generations, progress, "fusion") as bar:
            for _ in range(int(generations)):
                run()
                h = core.history[-1]
                bar.set_postfix(best=_fmt(h["best_so_far"]), mean=_fmt(h["mean"]))
                bar.update(1)
    finally:
        core.close()
    if core.best_x is None:
        raise RuntimeError(f"every evaluation failed ({core.failures} of {core.evals})")
    return FusionResult(sd, names, taus, core.best_x, core.best_f, core.start_f, core.history)
