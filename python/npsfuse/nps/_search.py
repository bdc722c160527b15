"""NPS-Pruning's search: :class:`Search` (ask/tell, resumable) and :func:`prune`.

Both drive the engine's search session (``gocore/nps.Session``, through
:class:`._engine._Session`), as the daemon's ``nps_search`` does: the start
point (all weights 1 = global magnitude top-k of τ) is scored first, then one
optimizer generation per ask; the session keeps the best, the history and the
generation count, so a fixed seed gives the same run bit for bit in a
notebook and through the daemon.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _executor
from .._state import ModelLike, StateDict, load_state_dict
from .._vocab import GENERATIONS, FailedScores, renamed
from ._engine import _apply, _Decomposition, _prunable, _Session, run_generations
from ._result import NPSResult, _atomic_write, fingerprint

Evaluate = Callable[[StateDict], float]

_SEARCH_FORMAT = "npsfuse.nps_search"
#: Version 2: the state of the engine's session ("session"); version 1
#: (npsfuse before issue 13, "core") cannot be resumed.
_SEARCH_VERSION = 2
_KINDS = ("svd", "magnitude")
_SCOPES = ("global", "tensor")
_OPTIMIZER_OPTIONS = frozenset({"sigma0", "strategy", "schedule"})


def _check_search(bounds: tuple[float, float], generations: int,
                  options: Mapping[str, Any] | None) -> tuple[float, float, dict[str, Any]]:
    """The box ``(lo, hi)`` and the optimizer options of a search, checked, and
    its planned number of generations (>= 0)."""
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (lo, hi) of numbers, got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"bounds must be finite, got ({lo}, {hi})")
    if lo >= hi:
        raise ValueError(f"bounds are inverted or empty: lo={lo} must be < hi={hi}")
    if int(generations) < 0:  # the session reads a negative count as "no plan"
        raise ValueError(f"generations must be >= 0, got {generations}")
    opts = dict(options or {})
    unknown = sorted(set(opts) - _OPTIMIZER_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown optimizer option(s) {', '.join(unknown)}; valid: "
            f"{', '.join(sorted(_OPTIMIZER_OPTIONS))}"
        )
    if "sigma0" in opts:
        s = float(opts["sigma0"])
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"sigma0 must be finite and > 0, got {s}")
        opts["sigma0"] = s
    return lo, hi, opts


class Search:
    """NPS-Pruning as ask/tell, for evaluation that lives in your own loop.

    Parameters
    ----------
    base, finetuned
        θ₀ and θ_ft: state dicts, ``nn.Module`` s or safetensors checkpoints;
        θ_ft may also be a PEFT LoRA adapter folder or a ``PeftModel``,
        merged into θ₀ on the fly as :func:`npsfuse.merge` does.
    density
        Fraction r ∈ (0, 1] of task-vector entries kept (the vocabulary's
        name for a kept fraction, as in :func:`npsfuse.merge`; ``keep`` is a
        deprecated alias).
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
        DE schedule); asking beyond it is allowed. Default
        :data:`npsfuse._vocab.GENERATIONS` (20), as every search.
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
        ``"tensor"``: ⌊density·n⌋ per tensor.
    rank
        SVD rank R (default 2^(M−2), the top edge of the last band).
    seed
        Seeds the randomized SVD and the optimiser.
    optimizer_options
        The optimizer's options (``sigma0``, ``strategy``,
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
    ``with``; garbage collection also does: the Go objects free themselves).
    """

    @renamed(keep="density")
    def __init__(
        self,
        base: ModelLike,
        finetuned: ModelLike,
        *,
        density: float = 0.1,
        subspaces: int = 8,
        kind: str = "svd",
        optimizer: str = "cma",
        generations: int = GENERATIONS,
        popsize: int | None = None,
        bounds: tuple[float, float] = (0.0, 2.0),
        per_layer: bool = False,
        scope: str = "global",
        rank: int | None = None,
        seed: int = 0,
        optimizer_options: Mapping[str, Any] | None = None,
        _state: Mapping[str, Any] | None = None,
    ) -> None:
        density = float(density)
        if not (0.0 < density <= 1.0):
            raise ValueError(f"density must lie in (0, 1], got {density}")
        if isinstance(subspaces, bool) or int(subspaces) != subspaces or subspaces < 1:
            raise ValueError(f"subspaces must be an integer >= 1, got {subspaces}")
        for name, value, valid in (("kind", kind, _KINDS), ("scope", scope, _SCOPES)):
            if value not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}, got {value!r}")
        if optimizer not in ("cma", "de"):
            raise ValueError(f"unknown optimizer {optimizer!r}; valid: cma, de")
        if popsize is not None and int(popsize) < 2:
            raise ValueError(f"popsize must be at least 2, got {popsize}")
        if rank is not None and int(rank) < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        lo, hi, opts = _check_search(bounds, generations, optimizer_options)
        self._base = load_state_dict(base, "base")
        # A PEFT LoRA adapter folder (or PeftModel) is merged into the base's
        # weights on the fly, as npsfuse.merge does.
        ft = load_state_dict(finetuned, "finetuned", base=self._base)
        self.names = _prunable(self._base, [ft])
        if not self.names:
            raise ValueError("the models have no non-empty floating-point tensor to prune")
        self.config: dict[str, Any] = {
            "density": density, "subspaces": int(subspaces), "kind": kind, "optimizer": optimizer,
            "generations": int(generations), "popsize": None if popsize is None else int(popsize),
            "bounds": [lo, hi], "per_layer": bool(per_layer), "scope": scope,
            "rank": None if rank is None else int(rank), "seed": int(seed),
            "optimizer_options": dict(optimizer_options or {}),
        }
        self.fingerprints = {"base": fingerprint(self._base, self.names),
                             "finetuned": fingerprint(ft, self.names)}
        which = [k for k in ("base", "finetuned")
                 if _state is not None and _state["fingerprints"][k] != self.fingerprints[k]]
        if which:
            raise ValueError(f"the {' and '.join(which)} model(s) differ from those of the saved "
                             "search (fingerprint mismatch)")
        self._dec = _Decomposition(self._base, ft, self.names, subspaces=int(subspaces),
                                   kind=kind, rank=rank or 0, seed=int(seed))
        self._tau = {k: torch.empty(self._base[k].shape, dtype=self._base[k].dtype)
                     for k in self.names}
        m = int(subspaces)
        start = np.ones((len(self.names), m) if per_layer else (m,))
        if _state is None:
            self._core = _Session.new(start, bounds=(lo, hi), optimizer=optimizer,
                                      popsize=popsize, seed=int(seed),
                                      generations=int(generations),
                                      options=opts)
        else:
            self._core = _Session.restore(_state["session"], start.shape)
        self._failures = FailedScores()

    # -- ask/tell --------------------------------------------------------------

    def candidates(self) -> np.ndarray:
        """The pending candidates' weights, shape (count, M) or (count, T, M).

        Like :meth:`ask` without building the models; use with :meth:`build`
        to hold one candidate model in memory at a time.
        """
        return self._core.ask()

    def build(self, weights: np.ndarray | Sequence[float]) -> StateDict:
        """θ₀ + τ_NPS for one weight vector ((M,), or (T, M) with ``per_layer``).

        A fresh state dict in the base's dtypes (integer buffers are the
        base's own tensors).
        """
        w = np.asarray(weights, dtype=np.float64)
        want = self._core.shape
        if w.shape != want:
            raise ValueError(f"weights must have shape {want}, got {w.shape}")
        self._dec.build(w, self.config["density"], self.config["scope"], self._tau)
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
        self._core.tell([self._failures.check(v, "a score was") for v in scores])

    # -- progress ---------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Completed search generations (the start point is not one)."""
        return int(self._core.info()["generation"])

    @property
    def done(self) -> bool:
        """Whether the planned ``generations`` have run."""
        return bool(self._core.info()["done"])

    @property
    def history(self) -> list[dict[str, Any]]:
        """Per generation: best, mean, weights, best_so_far, failed (see NPSResult)."""
        return self._core.info("weights")["history"]

    @property
    def best(self) -> tuple[np.ndarray | None, float]:
        """The best weights evaluated so far and their score (None, −inf before any)."""
        c = self._core.info()
        return c["best_x"], c["best_f"]

    def result(self) -> NPSResult:
        """The best candidate so far as an :class:`NPSResult`.

        Raises
        ------
        RuntimeError
            When no candidate has been evaluated successfully.
        """
        c = self._core.info("weights")
        if c["best_x"] is None:
            raise RuntimeError(
                "no candidate has a finite score yet"
                + (f" ({c['failures']} evaluations failed)" if c["failures"] else "")
            )
        tau = {k: torch.empty_like(t) for k, t in self._tau.items()}
        kept = self._dec.build(c["best_x"], self.config["density"], self.config["scope"], tau)
        cfg = {k: v for k, v in self.config.items() if k != "density"}
        return NPSResult(
            tau=tau, weights=c["best_x"], density=self.config["density"], score=c["best_f"],
            start_score=c["start_f"], history=c["history"], kept=kept, config=cfg,
            evaluations=c["evaluations"], failures=c["failures"],
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
            "version": _SEARCH_VERSION,
            "config": dict(self.config),
            "fingerprints": dict(self.fingerprints),
            "session": self._core.state(),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`state` as JSON to the file ``path`` (replaced atomically).

        ``Search.resume(path, base, finetuned)`` continues from it.
        """
        text = json.dumps(self.state(), indent=1)
        return _atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def resume(
        cls, state: Mapping[str, Any] | str | os.PathLike[str], base: ModelLike,
        finetuned: ModelLike,
    ) -> Search:
        """Continue a search from :meth:`state` or :meth:`save`.

        Parameters
        ----------
        state
            The dict of :meth:`state`, its JSON text, or the path (``str`` or
            path-like) of a JSON file holding it (as written by :meth:`save`).
            A string is read as JSON text when it starts with ``{``, else as
            a path.
        base, finetuned
            The models of the saved search (checked by fingerprint); the
            decomposition is recomputed from them.

        Raises
        ------
        ValueError
            A malformed state, a file that is not a saved search state, or
            other models.
        FileNotFoundError
            A path that does not exist.
        """
        state = _load_state(state)
        cfg = dict(state["config"])
        # States saved before the vocabulary of issue 18 name the density "keep".
        cfg.setdefault("density", cfg.pop("keep", None))
        return cls(base, finetuned, **cfg, _state=state)

    def close(self) -> None:
        """Free the Go decomposition and optimiser. Idempotent."""
        self._dec.close()
        self._core.close()

    def __enter__(self) -> Search:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_state(state: Mapping[str, Any] | str | os.PathLike[str]) -> Mapping[str, Any]:
    """A saved search state from a dict, its JSON text or a JSON file, checked."""
    where = "the state text"
    if isinstance(state, os.PathLike) or (isinstance(state, str)
                                          and not state.lstrip().startswith("{")):
        where = str(state)
        if Path(state).is_dir():
            raise ValueError(f"{where} is a directory, not a saved NPS search state "
                             "(a JSON file written by Search.save)")
        state = Path(state).read_text(encoding="utf-8", errors="replace")
    if isinstance(state, str):
        try:
            state = json.loads(state)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} is not a saved NPS search state (not JSON: {exc})"
                             ) from None
    if not isinstance(state, Mapping) or state.get("format") != _SEARCH_FORMAT:
        raise ValueError(f"{where} is not a saved NPS search state "
                         "(format field missing or wrong)")
    if state.get("version") == 1:
        raise ValueError(
            "this NPS search state was saved by an npsfuse before the engine's search "
            "session (state version 1) and cannot be resumed: start the search again"
        )
    if state.get("version") != _SEARCH_VERSION:
        raise ValueError(f"unsupported NPS search state version {state.get('version')!r}")
    return state


@renamed(keep="density")
def prune(
    base: ModelLike,
    finetuned: ModelLike,
    evaluate: Evaluate,
    *,
    density: float = 0.1,
    subspaces: int = 8,
    kind: str = "svd",
    optimizer: str = "cma",
    generations: int = GENERATIONS,
    popsize: int | None = None,
    bounds: tuple[float, float] = (0.0, 2.0),
    per_layer: bool = False,
    scope: str = "global",
    rank: int | None = None,
    seed: int = 0,
    progress: bool = True,
    optimizer_options: Mapping[str, Any] | None = None,
    executor: Any = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> NPSResult:
    """NPS-Pruning: search subspace weights that maximise ``evaluate``.

    Parameters
    ----------
    base, finetuned
        θ₀ and θ_ft (state dicts, ``nn.Module`` s or safetensors checkpoints;
        θ_ft also a PEFT LoRA adapter folder or ``PeftModel``, see :class:`Search`).
    evaluate
        ``evaluate(state_dict) -> float``, higher is better (e.g. validation
        accuracy); called once for the start point and ``generations ×
        popsize`` times after. Each call gets a fresh state dict. A call that
        returns NaN or ±inf marks a failed candidate, scored −inf (one
        ``RuntimeWarning`` per search; the count is in
        :attr:`NPSResult.failures`); an exception it raises stops the search
        and reaches the caller (``checkpoint=`` continues it), as in every
        search of npsfuse.
    density, subspaces, kind, optimizer, popsize, bounds, per_layer, scope, rank, seed,
    optimizer_options
        See :class:`Search`. ``per_layer`` means per *tensor*.
    generations
        Search generations after the start point (default 20, as every search).
    progress
        Show a tqdm bar over generations (best/mean in the postfix).
    executor
        ``None`` (evaluate here, one candidate at a time), ``"ray"``, an
        :class:`npsfuse.executors.RayExecutor` or a list of its worker
        actors: a generation's candidates are built and evaluated
        concurrently on Ray workers (same result for a seed; see
        :mod:`npsfuse.executors`).
    checkpoint
        A JSON file the search is saved to (:meth:`Search.save`) after the
        start point and after every generation. When it exists, the search
        continues from it (:meth:`Search.resume`) to the uninterrupted run's
        result; a checkpoint saved with other settings is refused, naming them.

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
        density outside (0, 1], subspaces < 1, bounds inverted, unknown kind,
        optimizer or scope, models that do not match.
    RuntimeError
        When every evaluation failed.
    TypeError
        ``evaluate`` returned something that is not a number.
    """
    settings = {"density": density, "subspaces": subspaces, "kind": kind, "optimizer": optimizer,
                "generations": generations, "popsize": popsize, "bounds": bounds,
                "per_layer": per_layer, "scope": scope, "rank": rank, "seed": seed,
                "optimizer_options": optimizer_options}
    base = load_state_dict(base, "base")
    finetuned = load_state_dict(finetuned, "finetuned", base=base)  # PEFT adapters merged
    ck = None if checkpoint is None else Path(checkpoint)
    resumed = ck is not None and ck.exists()
    s = Search.resume(ck, base, finetuned) if resumed else Search(base, finetuned, **settings)
    if resumed:
        differ = differing(s.config, settings)
        if differ:
            s.close()
            raise ValueError(f"checkpoint {str(ck)!r} was saved with other values of "
                             f"{', '.join(differ)}: delete it or use another file")
    # A worker opens its own Search (decomposition) from the inputs and config.
    remote = None if executor is None else _executor._NPSBuild(base, finetuned, s.config)
    scoring = _executor.evaluator(executor, s.build, evaluate, s._failures, remote=remote)
    with s, scoring as score:

        def step(_: int = 0) -> dict[str, Any]:
            s._core.tell(score(s.candidates()))
            if ck is not None:
                s.save(ck)
            return s._core.info("weights")

        if not resumed:
            step()  # the start point
        run_generations(step, s.generation, s.config["generations"], progress=progress,
                        desc=f"NPS density={s.config['density']:g}")
        return s.result()


def differing(saved: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """The settings of :func:`prune` in ``given`` whose value differs from a
    saved search's config (bounds and options compared as the config holds them)."""
    normal = {**given, "bounds": [float(x) for x in given["bounds"]],
              "optimizer_options": dict(given["optimizer_options"] or {})}
    return [k for k, v in normal.items() if saved.get(k) != v]


