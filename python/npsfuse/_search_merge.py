"""``npsfuse.search_merge``: search a merge method's hyper-parameters.

The low-dimensional counterpart of :class:`npsfuse.Evolver` (the job of
mergekit-evolve): the search space is a box of merge parameters (λ, density,
per-model weights and densities, method-specific knobs), each candidate is
merged by :func:`npsfuse.merge`'s Go engine and scored by the caller's dev
metric, and the search is the engine's search session (``gocore/nps.Session``,
the one NPS-Pruning uses) over CMA-ES or differential evolution (optionally
with CADE's cosine schedule) from ``gocore/search``.

The first candidate evaluated is the merge with the method's default
parameters (clipped into the box), so on the dev metric the result is never
worse than the plain merge when the defaults lie inside the box.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _executor
from . import merging as _m
from ._state import ModelLike, StateDict, load_state_dict
from ._vocab import GENERATIONS, FailedScores, Plotted, check_count, renamed
from .nps._engine import _Session, run_generations
from .nps._result import load_run, save_run
from .optim import cosine_schedule

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["SearchMergeResult", "search_merge"]

Evaluate = Callable[[StateDict], float]

#: Parameters that take one value per model when ``per_model=True``.
PER_MODEL = frozenset({"weight", "density", "tall_lambda"})

#: Defaults of the common parameters (the start point of the search).
_DEFAULTS: dict[str, float] = {"lam": 1.0, "density": 0.2, "weight": 1.0}


@dataclass
class SearchMergeResult(Plotted):
    """Outcome of :func:`search_merge`; :meth:`plot` draws the best and mean
    dev score per generation.

    Attributes
    ----------
    params
        The best parameters with the ``merge_params`` held fixed, exactly as keyword
        arguments of :func:`npsfuse.merge` (per-model values as lists, e.g.
        ``weights``, ``density``): ``npsfuse.merge(base, models, method,
        **result.params)`` is :meth:`state_dict`.
    best_score
        Their dev score.
    start_score
        Dev score of the start point (the method's defaults, clipped to the box).
    history
        Per generation: ``generation``, ``best`` (best so far), ``mean``
        (mean of the generation's successful scores), ``evaluations``.
    x
        The best point in the search space; ``names`` labels its coordinates.
    """

    params: dict[str, Any]
    best_score: float
    start_score: float
    history: list[dict[str, Any]]
    x: np.ndarray
    names: list[str]
    _merge: Callable[[Mapping[str, Any]], StateDict] = field(repr=False)

    def state_dict(self) -> StateDict:
        """The merge with the best parameters (computed again, a fresh dict)."""
        return self._merge(self.params)

    _figure = ("SearchMergeResult.plot", (6, 4), 100)

    def _draw(self, fig: Figure) -> None:
        ax = fig.subplots()
        g = [h["generation"] for h in self.history]
        ax.plot(g, [h["best"] for h in self.history], "o-", label="best")
        ax.plot(g, [h["mean"] for h in self.history], "s--", label="mean")
        ax.axhline(self.start_score, color="gray", lw=0.8, label="defaults")
        ax.set_xlabel("generation")
        ax.set_ylabel("dev score")
        ax.legend()


def _merge_fn(
    base_sd: StateDict, model_sds: Sequence[StateDict], method: str,
    merge_params: Mapping[str, Any],
) -> Callable[[Mapping[str, Any]], StateDict]:
    """``params -> merged state dict``: ``params`` are :func:`merge`'s keywords,
    over the fixed ``merge_params``."""

    def run(params: Mapping[str, Any]) -> StateDict:
        return dict(_m.merge(base_sd, model_sds, method, **{**merge_params, **params}))

    return run


@renamed(fixed="merge_params")
def search_merge(
    base: ModelLike,
    models: Sequence[ModelLike],
    method: str,
    evaluate: Evaluate,
    *,
    params: Mapping[str, tuple[float, float]] | None = None,
    per_model: bool = True,
    optimizer: str = "de",
    schedule: str = "cosine",
    strategy: str = "rand/1/bin",
    F: float = 0.5,
    CR: float = 0.5,
    F_bounds: tuple[float, float] = (0.1, 0.9),
    CR_bounds: tuple[float, float] = (0.1, 0.9),
    generations: int = GENERATIONS,
    popsize: int | None = None,
    sigma0: float | None = None,
    merge_params: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: bool = True,
    executor: Any = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> SearchMergeResult:
    """Search merge hyper-parameters that maximise a dev metric.

    Parameters
    ----------
    base, models
        The pre-trained model and the fine-tuned models (state dicts, modules
        or safetensors paths), as for :func:`npsfuse.merge`; a fine-tuned
        model may be a PEFT LoRA adapter folder or a ``PeftModel``, merged
        into the base's weights on the fly as :func:`npsfuse.merge` does.
    method
        A method of :func:`npsfuse.methods`.
    evaluate
        ``evaluate(state_dict) -> float``, higher is better. NaN or ±inf
        marks a failed candidate (scored −inf, never chosen, one
        ``RuntimeWarning`` per search); an exception it raises stops the
        search and reaches the caller (``checkpoint=`` continues it), as in
        every search of npsfuse.
    params
        Search box, parameter → ``(lo, hi)``. Names: ``lam``, ``density``,
        ``weight`` (the per-model weights w_t) and the method's own parameters
        (``gamma``, ``epsilon``, ``t``, ``tall_lambda``, ``mask_rate``, ``lam1``,
        ``lam2``). Default ``{"lam": (0.5, 2.0), "density": (0.05, 0.5)}``
        (``density`` only for methods that use it).
    per_model
        Give ``weight``, ``density`` and ``tall_lambda`` one coordinate per
        model (mergekit-evolve's per-model parameters); the others stay global.
    optimizer
        ``"de"`` (differential evolution) or ``"cma"`` (CMA-ES).
    schedule
        DE only: ``"cosine"`` (CADE: F and CR anneal from ``F_bounds[1]``,
        ``CR_bounds[1]`` to the lower bounds over the run; defaults 0.9 → 0.1,
        METHODS.md's for low-dimensional searches) or ``"constant"`` (``F``,
        ``CR``).
    strategy
        DE strategy: ``rand/1/bin``, ``best/1/bin`` or ``current-to-best/1/bin``.
    F, CR, F_bounds, CR_bounds
        DE control parameters (see ``schedule``).
    generations
        Generations after the initial population (DE) or in total (CMA-ES);
        default 20, as every search.
    popsize
        Population size (default: the optimiser's).
    sigma0
        CMA-ES initial step (default 0.3 · mean box width).
    merge_params
        Other keyword arguments of :func:`npsfuse.merge`, held fixed
        (e.g. ``{"seed": 1}``, ``{"normalize": False}``), the name
        :class:`npsfuse.Evolver` uses; ``fixed``, the old name, is a
        deprecated alias.
    seed
        Seed of the optimiser.
    progress
        Show a tqdm progress bar.
    executor
        ``None`` (evaluate here, one candidate at a time), ``"ray"``, an
        :class:`npsfuse.executors.RayExecutor` or a list of its worker
        actors: a generation's candidates are merged and evaluated
        concurrently on Ray workers, which hold the models once and receive
        only the merge parameters (same result for a seed).
    checkpoint
        A JSON file the search state (optimizer, RNG, history) is written to
        after every generation (atomically). When the file exists, the search
        continues from it: the result equals an uninterrupted run's. It must
        have been written by a call with the same method, box, optimizer
        settings and seed (otherwise ``ValueError`` names what differs).

    Returns
    -------
    SearchMergeResult
        The best parameters, their score, the history; ``.state_dict()``
        merges again with them.

    Raises
    ------
    ValueError
        Unknown method, optimizer, schedule or parameter; an empty or inverted box.
    RuntimeError
        Every candidate failed.
    TypeError
        ``evaluate`` returned something that is not a number.
    """
    _m._check_method(method)
    if optimizer not in ("de", "cma"):
        raise ValueError(f"optimizer must be 'de' or 'cma', got {optimizer!r}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    check_count("generations", generations)
    if params is None:
        params = {"lam": (0.5, 2.0)}
        if method in _m.USES_DENSITY:
            params = {**params, "density": (0.05, 0.5)}
    fixed = dict(merge_params or {})
    own = _m.METHOD_PARAMS.get(method, {})
    base_sd = load_state_dict(base, "base")
    # A PEFT LoRA adapter (folder or PeftModel) is merged into the base's weights.
    model_sds = [load_state_dict(m, f"model {i}", base=base_sd) for i, m in enumerate(models)]
    if not model_sds:
        raise ValueError("models must be a non-empty list of fine-tuned models")
    n_models = len(model_sds)
    coords: list[tuple[str, int | None]] = []
    lo: list[float] = []
    hi: list[float] = []
    x0: list[float] = []
    for name, box in params.items():
        key = "weight" if name == "weights" else name
        if key not in ("lam", "density", "weight") and key not in own:
            raise ValueError(
                f"cannot search {name!r} for {method!r}; searchable: lam, density, weight"
                + "".join(f", {k}" for k in own if k != "k")
            )
        if key == "k":
            raise ValueError("k is an integer; fix it with merge_params={'k': ...}")
        a, b = (float(box[0]), float(box[1]))
        if not (math.isfinite(a) and math.isfinite(b) and a <= b):
            raise ValueError(
                f"the box of {name!r} must be finite (lo, hi) with lo <= hi, got {box}"
            )
        default = _DEFAULTS.get(key, own.get(key))
        start = (a + b) / 2 if default is None else min(max(float(default), a), b)
        for i in range(n_models) if per_model and key in PER_MODEL else [None]:
            coords.append((key, i))
            lo.append(a)
            hi.append(b)
            x0.append(start)
    if not coords:
        raise ValueError("params is empty: nothing to search")
    labels = [k if i is None else f"{k}[{i}]" for k, i in coords]

    def to_params(x: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        per: dict[str, list[float]] = {}
        for (k, i), v in zip(coords, x, strict=True):
            if i is None:
                out[k] = float(v)
            else:
                per.setdefault(k, [0.0] * n_models)[i] = float(v)
        out.update(per)  # one value per model: merge's list form
        if "weight" in out:  # merge's keyword is weights=, always a list
            w = out.pop("weight")
            out["weights"] = w if isinstance(w, list) else [w] * n_models
        return out

    merge_with = _merge_fn(base_sd, model_sds, method, fixed)
    # The engine's search session, as for NPS: CMA-ES scores the start (the
    # defaults) first; DE has it as its individual 0 (start_in_population).
    opts: dict[str, Any] = {}
    if optimizer == "de":
        opts["strategy"] = strategy
        opts["start_in_population"] = True
        opts["schedule"] = (cosine_schedule(generations, f=F_bounds, cr=CR_bounds)
                            if schedule == "cosine"
                            else {"kind": "constant", "f": float(F), "cr": float(CR)})
    elif sigma0 is not None:
        opts["sigma0"] = float(sigma0)
    rounds = generations + (1 if optimizer == "de" else 0)
    fingerprint = {"method": method, "names": labels, "lo": lo, "hi": hi, "x0": x0,
                   "optimizer": optimizer, "popsize": popsize, "seed": seed,
                   "rounds": rounds, "options": opts}
    saved = load_run(checkpoint, fingerprint, "search_merge")
    history: list[dict[str, Any]] = []
    if saved is None:
        session = _Session.new(np.asarray(x0), bounds=(lo, hi), optimizer=optimizer,
                               popsize=popsize, seed=seed, generations=rounds, options=opts)
    else:
        session = _Session.restore(saved["state"], (len(x0),))
        history = list(saved["history"])
    failed = FailedScores()
    scoring = _executor.evaluator(executor, merge_with, evaluate, failed, describe=to_params)
    with session, scoring as score:

        def run() -> list[float]:
            scores = score(session.ask())
            session.tell(scores)  # a non-finite score is a failed candidate
            return [s for s in scores if math.isfinite(s)]

        def step(_: int) -> dict[str, Any]:
            ok = run()
            info = session.info()
            history.append({"generation": len(history), "best": info["best_f"],
                            "mean": float(np.mean(ok)) if ok else -math.inf,
                            "evaluations": info["evaluations"]})
            if checkpoint is not None:
                save_run(checkpoint, fingerprint, state=session.state(), history=history)
            return info

        if optimizer == "cma" and not history:
            run()  # the start point
        run_generations(step, len(history), rounds, progress=progress, desc=f"search {method}",
                        postfix=lambda i: {"best": f"{i['best_f']:.4g}", "evals": i["evaluations"]})
        info = session.info()
    if info["best_x"] is None:
        raise RuntimeError(f"every evaluation failed ({info['failures']} of "
                           f"{info['evaluations']} candidates)")
    best_x = info["best_x"]
    return SearchMergeResult(params={**fixed, **to_params(best_x)}, best_score=info["best_f"],
                             start_score=info["start_f"], history=history, x=best_x,
                             names=labels, _merge=merge_with)

