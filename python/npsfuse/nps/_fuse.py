"""Using NPS results: :func:`transfer` (θ₀ + λ·τ_NPS) and :func:`fuse`
(θ₀ + Σ λ_i τ_NPS,i, the λ searched by the engine's search session on request).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import _executor
from .._state import ModelLike, StateDict, load_state_dict
from .._vocab import GENERATIONS, FailedScores, Plotted
from ._engine import _apply, _Session, run_generations
from ._result import NPSResult, _draw_history, load_run, save_run, task_vector
from ._search import Evaluate, _check_search

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def transfer(base: ModelLike, result: NPSResult | str | os.PathLike, lam: float = 1.0) -> StateDict:
    """θ₀ + λ·τ_NPS: apply a pruned task vector to ``base``.

    ``result`` is an :class:`NPSResult` or the path of one saved with
    :meth:`NPSResult.save`; ``base`` must be the model it was computed from
    (checked by fingerprint). The order is the library's: the base first,
    then what is applied onto it, then λ (as :func:`npsfuse.compress.load`).
    """
    if not isinstance(result, NPSResult):
        result = NPSResult.load(result)
    return result.state_dict(lam, base=base)


class FusionResult(Plotted):
    """The outcome of :func:`fuse`; :meth:`plot` draws the validation score
    and the λ per generation.

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
        build: Callable[[list[float]], StateDict],
        lambdas: np.ndarray,
        score: float | None,
        start_score: float | None,
        history: list[dict[str, Any]],
    ) -> None:
        self._build = build  # λ -> θ₀ + Σ λ_i τ_i
        self.lambdas = np.asarray(lambdas, dtype=np.float64)
        self.score = score
        self.start_score = start_score
        self.history = history

    def __repr__(self) -> str:
        return f"FusionResult(lambdas={self.lambdas.tolist()}, score={self.score})"

    def state_dict(self) -> StateDict:
        """θ₀ + Σ λ_i τ_i in the base's dtypes (Go ``Apply``, float32 arithmetic)."""
        return self._build(self.lambdas.tolist())

    _figure = ("FusionResult.plot", (8, 6.5), 110)

    def _draw(self, fig: Figure) -> None:
        _draw_history(fig, self.history, self.start_score, "lambdas", "λ", "fusion")


def fuse(
    base: ModelLike,
    results: Sequence[NPSResult | Mapping[str, torch.Tensor] | str | os.PathLike],
    evaluate: Evaluate | None = None,
    lambdas: Sequence[float] | None = None,
    *,
    optimizer: str = "cma",
    generations: int = GENERATIONS,
    popsize: int | None = None,
    bounds: tuple[float, float] = (0.0, 2.0),
    seed: int = 0,
    progress: bool = True,
    optimizer_options: Mapping[str, Any] | None = None,
    executor: Any = None,
    checkpoint: str | os.PathLike[str] | None = None,
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
        λ are ``lambdas`` (default all 1) and nothing is searched. NaN or
        ±inf marks a failed candidate (−inf, one ``RuntimeWarning``); an
        exception stops the search and reaches the caller, as in :func:`prune`.
    lambdas
        The λ (without ``evaluate``) or the search's start point (with it;
        evaluated first, so the result is never worse on ``evaluate``).
    optimizer, generations, popsize, bounds, seed, progress, optimizer_options
        As in :func:`prune` (default 20 generations, as every search); the
        search is over λ ∈ [lo, hi]^k.
    executor
        As in :func:`prune`: score a generation's λ concurrently on Ray
        workers, which hold the base and the task vectors.
    checkpoint
        A JSON file the λ search is saved to after the start point and after
        every generation; when it exists, the search continues from it to the
        uninterrupted run's result (a checkpoint of another search is refused).

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
    taus = [task_vector(r, sd, f"task vector {i}", f"result {i}")[0]
            for i, r in enumerate(results)]
    k = len(taus)
    start = np.ones(k) if lambdas is None else np.asarray([float(x) for x in lambdas])
    if start.shape != (k,):
        raise ValueError(f"{start.size} lambdas given for {k} results")
    if not np.all(np.isfinite(start)):
        raise ValueError(f"lambdas must be finite, got {start.tolist()}")
    build = functools.partial(_apply, sd, names, taus)  # a worker's too: it holds the inputs
    if evaluate is None:
        return FusionResult(build, start, None, None, [])
    lo, hi, options = _check_search(bounds, generations, optimizer_options)
    spec = {"start": start.tolist(), "bounds": [lo, hi], "optimizer": optimizer,
            "popsize": popsize, "seed": int(seed), "generations": int(generations),
            "options": options, "results": k}
    saved = load_run(checkpoint, spec, "fuse")
    if saved is None:
        core = _Session.new(start, bounds=(lo, hi), optimizer=optimizer, popsize=popsize,
                            seed=int(seed), generations=int(generations), options=options)
    else:
        core = _Session.restore(saved["state"], (k,))
    fails = FailedScores()
    with core, _executor.evaluator(executor, build, evaluate, fails) as score:

        def step(g: int) -> dict[str, Any]:
            core.tell(score(core.ask()))
            if checkpoint is not None:
                save_run(checkpoint, spec, state=core.state(), done=g)
            return core.info("lambdas")

        c = step(0) if saved is None else core.info("lambdas")  # 0: the start point
        run_generations(step, c["generation"], int(generations), progress=progress,
                        desc="fusion")
        c = core.info("lambdas")
    if c["best_x"] is None:
        raise RuntimeError(f"every evaluation failed ({c['failures']} of {c['evaluations']})")
    return FusionResult(build, c["best_x"], c["best_f"], c["start_f"], c["history"])

