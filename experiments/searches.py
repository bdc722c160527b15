"""The methods that search on validation data, each within the same budget.

Every function takes the seed's :class:`~study.Study`, spends at most
``cfg.budget`` validation evaluations (counted by the study under the row's
name) and returns the merged model. Searches over λ use the λ grid's range.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import config
import names
import npsfuse
import torch
from npsfuse import nps

if TYPE_CHECKING:
    from study import Study

StateDict = dict[str, torch.Tensor]


SEARCHES = config.SEARCHES


def enabled(cfg: config.Config, name: str) -> bool:
    """Whether search ``name`` (a key of :data:`SEARCHES`) runs under ``cfg``."""
    return cfg.searches is None or name in cfg.searches


def search_rows(cfg: config.Config) -> list[str]:
    """The row names of the searching methods that run, in order."""
    rows = {"neuro_grid": [names.NEURO_GRID],
            "nps_fusion": [names.nps_fusion(k) for k in cfg.fusion_keeps],
            "evolver": [names.EVOLVER], "de_cade": [names.DE_CADE],
            "de_fixed": [names.DE_FIXED], "cma": [names.CMA]}
    return [r for key in SEARCHES if enabled(cfg, key) for r in rows[key]]


def searches(st: Study) -> dict[str, Callable[[], StateDict]]:
    """Row name → the search producing its model (the enabled ones)."""
    out: dict[str, Callable[[], StateDict]] = {names.NEURO_GRID: lambda: neuro_grid(st)}
    for k in st.cfg.fusion_keeps:
        out[names.nps_fusion(k)] = lambda k=k: nps_fusion(st, k)
    out[names.EVOLVER] = lambda: evolver(st)
    out[names.DE_CADE] = lambda: ties_search(st, "de", "cosine")
    out[names.DE_FIXED] = lambda: ties_search(st, "de", "constant")
    out[names.CMA] = lambda: ties_search(st, "cma", "cosine")
    return {row: out[row] for row in search_rows(st.cfg)}


def neuro_grid(st: Study) -> StateDict:
    """NeuroMerging with validation: the best (λ₁, λ₂) of :func:`config.neuro_grid`."""
    best, best_s, best_p = None, -math.inf, (math.nan, math.nan)
    for l1, l2 in config.neuro_grid(st.cfg):
        st.meter.add("merge", len(st.finetuned) * st.n_params)
        cand = npsfuse.merge(st.theta0, st.finetuned, "neuro", lam1=l1, lam2=l2)
        s = st.ev.val_score(cand)
        if s > best_s:
            best, best_s, best_p = cand, s, (l1, l2)
    st.extra.setdefault("searched_params", {})[names.NEURO_GRID] = {"lam1": best_p[0],
                                                                     "lam2": best_p[1]}
    return best  # type: ignore[return-value]


def nps_prune(st: Study, i: int, keep: float) -> nps.NPSResult:
    """NPS-Pruning of task ``i``'s fine-tune at ``keep`` (searched once per seed, cached).

    Its single-task validation evaluations are counted under
    ``NPS-Pruning (keep k)``; the seconds it took are kept for the fusion.
    """
    key = f"nps:{i}:{keep}"
    if key not in st.cache:
        pop, gens = config.nps_generations(st.cfg)
        t0 = time.perf_counter()
        with st.ev.counting(f"NPS-Pruning (keep {keep})"):
            r = nps.prune(st.theta0, st.finetuned[i], st.ev.task_val_score(i), density=keep,
                          generations=gens, popsize=pop, seed=st.seed, progress=False)
        st.meter.add("merge", config.nps_evals(st.cfg) * st.n_params)
        st.cache[key] = (r, time.perf_counter() - t0)
    return st.cache[key][0]


def nps_fusion(st: Study, keep: float) -> StateDict:
    """NPS fusion: per-task NPS-Pruning at ``keep``, then θ₀ + Σ λ_i τ_NPS,i with
    the λ_i searched by CMA-ES on the rest of the budget."""
    row = names.nps_fusion(keep)
    results = [nps_prune(st, i, keep) for i in range(len(st.tasks))]
    # The fusion is charged the per-task searches it reuses (evaluations and time).
    st.ev.evals[row] = st.ev.evals.get(row, 0.0) + st.ev.evals.get(f"NPS-Pruning (keep {keep})",
                                                                     0.0)
    st.reused_seconds[row] = sum(st.cache[f"nps:{i}:{keep}"][1] for i in range(len(st.tasks)))
    pop, gens = config.fusion_popsize_generations(st.cfg)
    st.meter.add("merge", (1 + pop * gens) * len(results) * st.n_params)
    out = nps.fuse(st.theta0, results, evaluate=st.ev.val_score, generations=gens, popsize=pop,
                   seed=st.seed, progress=False)
    return out.state_dict() if hasattr(out, "state_dict") else out


def evolver(st: Study) -> StateDict:
    """Evolver with a merger (Du et al., 2024): TIES at the run's density with
    the λ its grid chose (1 if TIES has no λ row)."""
    lam = st.lam_info.get(names.lam_row("ties", st.cfg.density), {}).get("lam", 1.0)
    gens = config.evolver_generations(st.cfg)
    ev = npsfuse.Evolver(st.theta0, st.finetuned, st.ev.val_score, merge="ties",
                         merge_params={"density": st.cfg.density, "lam": lam},
                         generations=gens, seed=st.seed)
    res = ev.run(progress=False)
    st.meter.add("merge", (1 + gens * len(st.finetuned)) * len(st.finetuned) * st.n_params)
    st.histories[names.EVOLVER] = [dict(h) for h in res.history]
    st.extra.setdefault("searched_params", {})[names.EVOLVER] = {"merger_lam": lam}
    return res.state_dict()


def ties_search(st: Study, optimizer: str, schedule: str) -> StateDict:
    """TIES λ and density by DE (CADE's cosine schedule or fixed F, CR) or CMA-ES."""
    c = st.cfg
    row = {("de", "cosine"): names.DE_CADE, ("de", "constant"): names.DE_FIXED}.get(
        (optimizer, schedule), names.CMA)
    gens = config.de_generations(c) if optimizer == "de" else config.cma_generations(c)
    res = npsfuse.search_merge(
        st.theta0, st.finetuned, "ties", st.ev.val_score,
        params={"lam": (c.search_lam[0], c.search_lam[1]),
                "density": (c.search_density[0], c.search_density[1])},
        per_model=False, optimizer=optimizer, schedule=schedule, F=c.de_fixed_f,
        CR=c.de_fixed_cr, generations=gens, popsize=c.popsize, seed=st.seed, progress=False)
    n_evals = res.history[-1]["evaluations"] if res.history else 0
    st.meter.add("merge", n_evals * len(st.finetuned) * st.n_params)
    hist = [dict(h) for h in res.history]
    if optimizer == "de":
        for h in hist:
            h["F"], h["CR"] = _de_controls(c, schedule, h["generation"], gens)
    st.histories[row] = hist
    st.extra.setdefault("searched_params", {})[row] = {
        k: (float(v) if isinstance(v, (int, float)) else v) for k, v in res.params.items()}
    return res.state_dict()


def _de_controls(c: config.Config, schedule: str, g: int, gens: int) -> tuple[float, float]:
    """F and CR of generation ``g`` (for the plot): CADE's documented cosine
    (npsfuse.optim.cosine_schedule, 0.9 → 0.1 over the run), or the fixed pair."""
    if schedule == "constant":
        return c.de_fixed_f, c.de_fixed_cr
    v = 0.1 + 0.5 * 0.8 * (1 + math.cos(math.pi * g / gens))
    return v, v


def history_summary(hist: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(evaluations used, best validation score so far) per generation."""
    return [(int(h.get("evaluations", i)), float(h["best"])) for i, h in enumerate(hist)]
