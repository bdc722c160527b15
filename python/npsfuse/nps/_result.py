"""The outcome of an NPS-Pruning search: :class:`NPSResult`, its file format and plots.

Also :func:`fingerprint` (which catches a wrong base model) and the atomic
file write the result files and ``npsfuse decompress`` use.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._state import ModelLike, StateDict, load_state_dict
from .._vocab import Plotted, deprecated, renamed
from ._engine import _apply

#: Elements sampled per tensor by :func:`fingerprint`.
FINGERPRINT_SAMPLES = 4096
_RESULT_FORMAT = "npsfuse.nps_result"
_FORMAT_VERSION = 1
#: What a result file stores as the result holds it (after weights, keep,
#: score and start_score), in the file's order.
_STORED = ("history", "kept", "tensor_names", "config", "evaluations", "failures",
           "base_fingerprint")
if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


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


def check_base(sd: Mapping[str, torch.Tensor], names: Sequence[str], expected: str, of: str,
               other: str, whose: str) -> None:
    """Check that ``sd`` is the base model of ``of`` (it has the tensors
    ``names``, whose :func:`fingerprint` is ``expected``); ``other`` says that a
    wrong one is wrong, and ``whose`` fingerprint differs."""
    missing = [k for k in names if k not in sd]
    if missing:
        raise ValueError(f"the base model lacks tensor {missing[0]!r} of {of}")
    if fingerprint(sd, names) != expected:
        raise ValueError(f"{other} ({whose} fingerprint differs: names, shapes, dtypes or "
                         "sampled values)")


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


def read_header(path: str | os.PathLike, fmt: str, what: str, unreadable: str) -> dict[str, str]:
    """The header (metadata) of the safetensors file ``path``, an npsfuse
    ``what`` file of format ``fmt``; ``unreadable`` says what a file safetensors
    cannot open is not."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {str(p)!r}")
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:
        raise ValueError(f"{str(p)!r} {unreadable}: {exc}") from None
    if header.get("format") != fmt:
        raise ValueError(f"{str(p)!r} is not an npsfuse {what} file")
    return header


def load_run(path: str | os.PathLike[str] | None, spec: Mapping[str, Any],
             what: str) -> dict[str, Any] | None:
    """A search saved by :func:`save_run` to continue, or ``None`` when ``path``
    is ``None`` or does not exist yet. ``spec`` (the call's settings) must equal
    the saved one; otherwise ``ValueError`` names the settings that differ."""
    if path is None or not os.path.exists(path):
        return None
    try:
        saved = json.loads(Path(path).read_text())
        old = saved["spec"]
        if not isinstance(old, dict):
            raise TypeError("spec is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"checkpoint {str(path)!r} is not a {what} checkpoint "
                         f"({type(exc).__name__}: {exc})") from None
    differ = sorted(k for k in spec if json.dumps(old.get(k)) != json.dumps(spec[k]))
    if differ:
        raise ValueError(f"checkpoint {str(path)!r} was written by a search with other "
                         f"{', '.join(differ)}: delete it or use another file")
    return saved


def save_run(path: str | os.PathLike[str], spec: Mapping[str, Any], **payload: Any) -> None:
    """Write a search's ``spec`` and ``payload`` (JSON-able) to ``path`` atomically."""
    text = json.dumps({"spec": dict(spec), **payload})
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _draw_history(fig: Figure, history: Sequence[Mapping[str, Any]], start_score: float | None,
                  key: str, label: str, title: str) -> None:
    """Fitness per generation (top) and searched values per generation (bottom)."""
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


class NPSResult(Plotted):
    """The outcome of an NPS-Pruning search.

    :meth:`plot` draws the validation score per generation and the band
    weights per generation.

    Attributes
    ----------
    weights : numpy.ndarray
        The best subspace weights: shape (M,) shared by all tensors, or
        (T, M) with ``per_layer`` (row i for ``tensor_names[i]``).
    density : float
        Fraction of task-vector entries kept (``keep``, its old name, is a
        deprecated alias).
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
        Entries of τ_NPS kept (⌊density·n⌋ over all pruned entries for the
        global scope).
    tensor_names : list of str
        The pruned tensors (floating point, non-empty), in name order.
    config : dict
        subspaces, kind, rank, scope, optimizer, popsize, bounds, per_layer,
        seed, generations.
    evaluations, failures : int
        Candidates evaluated, and how many of those were scored −inf.
    base_fingerprint : str
        :func:`fingerprint` of the base over ``tensor_names``.
    """

    @renamed(keep="density")
    def __init__(
        self,
        *,
        tau: StateDict,
        weights: np.ndarray,
        density: float,
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
        self.density = float(density)
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
        return (f"NPSResult(density={self.density}, score={self.score:.6g}, "
                f"start_score={self.start_score}, weights={w})")

    @property
    def keep(self) -> float:
        """Deprecated alias of :attr:`density`."""
        deprecated("NPSResult", ".keep", ".density")
        return self.density

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
        check_base(sd, self.tensor_names, self.base_fingerprint, "this result",
                   "this base model is not the one the result was computed from", "its")
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

    _figure = ("NPSResult.plot", (8, 6.5), 110)

    def _draw(self, fig: Figure) -> None:
        _draw_history(fig, self.history, self.start_score, "weights", "w",
                      f"NPS-Pruning, density={self.density:g}")

    def _meta(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist(),
                "keep": self.density,  # the file format's name (version 1)
                "score": _finite_or_none(self.score),
                "start_score": _finite_or_none(self.start_score),
                **{k: getattr(self, k) for k in _STORED}}

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

        unreadable = "is not a readable NPS result file"
        meta = read_header(path, _RESULT_FORMAT, "NPS result", unreadable)
        try:
            info = json.loads(meta["npsfuse.meta"])
            with safe_open(str(path), framework="pt") as f:
                tau = {k: f.get_tensor(k) for k in info["tensor_names"]}
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"{str(path)!r} {unreadable}: {exc}") from None
        res = cls(tau=tau, weights=info["weights"], density=info["keep"],
                  score=-math.inf if info["score"] is None else info["score"],
                  start_score=info["start_score"],
                  **{k: info[k] for k in _STORED if k != "tensor_names"})
        if base is not None:
            res._base = res._resolve_base(base)
        return res



def task_vector(r: NPSResult | Mapping[str, torch.Tensor] | str | os.PathLike, base: StateDict,
                what: str, kind: str) -> tuple[StateDict, NPSResult | None]:
    """τ of ``r`` and the :class:`NPSResult` it comes from (None for a state dict).

    ``r`` is an NPSResult (checked against ``base``), the path of a saved one,
    or a task-vector state dict, ``what`` in messages, whose tensors the base
    has; ``kind`` names ``r`` in the error for anything else.
    """
    if isinstance(r, (str, os.PathLike)):
        r = NPSResult.load(r)
    if isinstance(r, NPSResult):
        r._resolve_base(base)
        return r._tau, r
    if not isinstance(r, Mapping):
        raise TypeError(f"{kind} is a {type(r).__name__}; pass an NPSResult, a path, or a "
                        "task-vector state dict")
    tau = load_state_dict(r, what)
    extra = [k for k in tau if k not in base]
    if extra:
        raise ValueError(f"{what} has tensor {extra[0]!r}, which the base lacks")
    return tau, None
