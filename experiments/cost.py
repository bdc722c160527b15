"""Where a run's time goes, and what another configuration would cost.

:class:`Meter` times each phase of a run and the timed pieces of work in
it, in units that do not depend on the configuration:

* layer-tokens (tokens × transformer layers) through evaluation (``eval``),
  fine-tuning (``train``), the frozen feature pass (``feature``) and the
  data-aware helpers (``fisher``, ``regmean``, ``adamerging``), with the
  number of calls, so that a per-call cost and a per-token cost are both
  fitted (a miniature's small calls are dominated by the first);
* merged parameters (models × parameters) of each library merge of the
  plain rows (``merge:<method>``: SVD-based methods cost far more per
  parameter than task arithmetic);
* ``merge``: an untimed count of the other merged models built (search
  candidates, NPS candidates, pruned models), which the rest of a phase's
  time is charged to.

:func:`rates` fits seconds per call and per unit from a run's samples;
:func:`workload` counts the units of any configuration from its budget
rules (without running it); :func:`estimate` turns them into seconds per
phase. The report checks the model against this run's measured phases and
extrapolates the full ``make experiment``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import config
import methods
import searches
from config import Config

#: Timed kinds of work in layer-tokens, whose cost is fitted per call and per unit.
TOKEN_KINDS = ("eval", "train", "feature", "fisher", "regmean", "adamerging")
#: Phases whose unexplained time is charged to the ``merge`` count.
MERGE_PHASES = ("methods", "pruning", "out-of-domain")
#: Layers of all-MiniLM-L6-v2 and parameters of one of its transformer layers.
LAYERS = 6
LAYER_PARAMS = 1_774_464

Work = dict[str, float]


class Meter:
    """Wall and CPU time per phase, and the work done in it.

    ``phases[name]`` holds ``wall``, ``cpu`` and, per kind of work, its
    units (``kind``), calls (``kind#calls``) and timed seconds
    (``kind@wall``, ``kind@cpu``); ``samples[kind]`` holds one
    ``(calls, units, wall, cpu)`` per timed block, for the per-call fit.
    """

    def __init__(self) -> None:
        self.phases: dict[str, Work] = {}
        self.samples: dict[str, list[tuple[float, float, float, float]]] = {}
        self.current = "other"

    def _row(self, name: str | None = None) -> Work:
        return self.phases.setdefault(name or self.current, {"wall": 0.0, "cpu": 0.0})

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Attribute the time and work inside the ``with`` block to phase ``name``."""
        row = self._row(name)
        prev, self.current = self.current, name
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            row["wall"] += time.perf_counter() - w
            row["cpu"] += time.process_time() - c
            self.current = prev

    @contextmanager
    def work(self, kind: str, units: float, calls: float = 1.0) -> Iterator[None]:
        """Count ``units`` and ``calls`` of ``kind`` and time the block, which
        does that work and nothing else."""
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            dw, dc = time.perf_counter() - w, time.process_time() - c
            row = self._row()
            for key, v in ((kind, units), (f"{kind}#calls", calls), (f"{kind}@wall", dw),
                           (f"{kind}@cpu", dc)):
                row[key] = row.get(key, 0.0) + v
            self.samples.setdefault(kind, []).append((calls, units, dw, dc))

    def add(self, kind: str, units: float) -> None:
        """Count ``units`` of untimed work ``kind`` (``merge``)."""
        row = self._row()
        row[kind] = row.get(kind, 0.0) + units


def fit(samples: list[tuple[float, float, float, float]], clock: int) -> tuple[float, float]:
    """Seconds per call and per unit, least squares over ``samples``
    (``clock`` 2: wall, 3: CPU); proportional (no per-call term) when the fit
    is degenerate or negative."""
    t = [s[clock] for s in samples]
    units = [s[1] for s in samples]
    calls = [s[0] for s in samples]
    prop = (0.0, sum(t) / max(sum(units), 1e-12))
    if len(samples) < 3:
        return prop
    scc = sum(c * c for c in calls)
    scu = sum(c * u for c, u in zip(calls, units, strict=True))
    suu = sum(u * u for u in units)
    sct = sum(c * x for c, x in zip(calls, t, strict=True))
    sut = sum(u * x for u, x in zip(units, t, strict=True))
    det = scc * suu - scu * scu
    if det <= 1e-9 * scc * suu:
        return prop
    a, b = (sct * suu - sut * scu) / det, (sut * scc - sct * scu) / det
    return (a, b) if a >= 0 and b >= 0 else prop


def rates(meter: Meter) -> dict[str, float]:
    """Seconds per call (``{clock}:{kind}#call``) and per unit (``{clock}:{kind}``)
    of every timed kind, per ``merge`` unit for the rest of the merge phases'
    time, and the fixed seconds (``{clock}:fixed:{phase}``) of phases with no
    work counted (loading the model, the estimate)."""
    out: dict[str, float] = {}
    for ci, clock in ((2, "wall"), (3, "cpu")):
        for kind, samples in meter.samples.items():
            out[f"{clock}:{kind}#call"], out[f"{clock}:{kind}"] = fit(samples, ci)
        rest = sum(max(0.0, p[clock] - sum(v for k, v in p.items() if k.endswith(f"@{clock}")))
                   for n, p in meter.phases.items() if n in MERGE_PHASES)
        merges = sum(p.get("merge", 0.0) for n, p in meter.phases.items() if n in MERGE_PHASES)
        out[f"{clock}:merge"] = rest / max(merges, 1.0)
        for n, p in meter.phases.items():
            if n not in MERGE_PHASES and not any("@" in k for k in p):
                out[f"{clock}:fixed:{n}"] = p[clock]
    return out


def estimate(work: dict[str, Work], r: dict[str, float], clock: str = "wall") -> dict[str, float]:
    """Seconds per phase of ``work`` (see :func:`workload`) at the rates ``r``.

    A merge method without a measured rate is charged TIES's rate.
    """
    out = {}
    for phase, w in work.items():
        if not w and f"{clock}:fixed:{phase}" in r:
            out[phase] = r[f"{clock}:fixed:{phase}"]
            continue
        s = 0.0
        for k, v in w.items():
            if k.endswith("#calls"):
                s += v * r.get(f"{clock}:{k[:-6]}#call", 0.0)
                continue
            rate = r.get(f"{clock}:{k}")
            if rate is None and k.startswith("merge:"):
                rate = r.get(f"{clock}:merge:ties", r.get(f"{clock}:merge", 0.0))
            s += v * (rate or 0.0)
        out[phase] = s
    return out


# --------------------------------------------------------------- workload --


@dataclass
class TaskSize:
    """A task's split sizes and mean tokens per example (after truncation)."""

    train: int
    val: int
    test: int
    val_search: int
    tokens: float


class Tally:
    """Units and calls of one phase's work, added up as the budget rules dictate."""

    def __init__(self) -> None:
        self.w: Work = {}

    def add(self, kind: str, units: float, calls: float = 0.0) -> None:
        """Add ``units`` (and ``calls``, for the per-call term) of ``kind``."""
        self.w[kind] = self.w.get(kind, 0.0) + units
        if calls:
            self.w[f"{kind}#calls"] = self.w.get(f"{kind}#calls", 0.0) + calls


def workload(cfg: Config, sizes: dict[str, TaskSize], ood: TaskSize | None,
             plan: methods.Plan) -> dict[str, Work]:
    """The work of each phase of a run of ``cfg``, from its budget rules.

    Parameters
    ----------
    cfg
        The configuration.
    sizes
        Per task of ``cfg``: split sizes and mean tokens.
    ood
        The out-of-domain task's sizes (None: no out-of-domain study).
    plan
        The plain-merge rows (:func:`methods.plan`).

    Returns
    -------
    dict
        phase → kind → units (and ``kind#calls``), for the whole run (all seeds).
    """
    n, S, Lt, K = len(cfg.tasks), len(cfg.seeds), cfg.tuned_layers, len(cfg.keeps)
    P = LAYER_PARAMS * Lt

    def tok(part: str) -> float:
        return sum(getattr(s, part) * s.tokens for s in sizes.values()) * Lt

    train, test, vs = tok("train"), tok("test"), tok("val_search")
    probes = cfg.head == "probe" or cfg.probe_row
    ood_train = ood.train * ood.tokens if ood and cfg.head == "probe" else 0.0
    phases = {p: Tally() for p in ("features", "heads", "fine-tune", "methods", "pruning",
                                   "out-of-domain", "kernels vs NumPy")}
    raw_tokens = (tok("train") + tok("val") + tok("test")) / Lt
    phases["features"].add("feature", (raw_tokens + (ood.tokens * ood.test if ood else 0.0)
                                       + ood_train) * (LAYERS - Lt + 1),
                            3 * n + (0 if not ood else 2 if cfg.head == "probe" else 1))
    if probes:
        phases["heads"].add("eval", train, n)
    if ood_train:
        phases["heads"].add("eval", ood_train * Lt, 1)
    phases["fine-tune"].add("train", S * cfg.epochs * train, S * n)
    _methods(phases["methods"], cfg, plan, S, n, P, test, vs, sizes)
    fused = cfg.fusion_keeps if searches.enabled(cfg, "nps_fusion") else []
    pruning_searches = len([k for k in cfg.keeps if k not in fused])
    pr = phases["pruning"]
    pr.add("eval", S * 4 * K * test, S * 4 * K * n)
    pr.add("eval", S * pruning_searches * config.nps_evals(cfg) * vs,
           S * pruning_searches * config.nps_evals(cfg) * n)
    pr.add("merge", S * n * (4 * K + pruning_searches * config.nps_evals(cfg)) * P)
    if ood:
        phases["out-of-domain"].add("eval", S * (n + 4) * ood.test * ood.tokens * Lt, S * (n + 4))
    if cfg.kernels:
        phases["kernels vs NumPy"].add("kernel", n * P, 0)
    return {"load model": {}, **{k: v.w for k, v in phases.items()}, "estimate": {}}


def search_evals(cfg: Config) -> int:
    """Validation evaluations (all tasks) of every searching row that runs, per seed."""
    n = len(cfg.tasks)
    evals = {
        "neuro_grid": len(config.neuro_grid(cfg)),
        "nps_fusion": len(cfg.fusion_keeps) * (
            config.nps_evals(cfg) + 1 + 4 * config.fusion_popsize_generations(cfg)[1]),
        "evolver": 1 + n * config.evolver_generations(cfg),
        "de_cade": cfg.popsize * (1 + config.de_generations(cfg)),
        "de_fixed": cfg.popsize * (1 + config.de_generations(cfg)),
        "cma": 1 + cfg.popsize * config.cma_generations(cfg),
    }
    return sum(v for k, v in evals.items() if searches.enabled(cfg, k))


def _methods(t: Tally, cfg: Config, plan: methods.Plan, S: int, n: int, P: float,
             test: float, vs: float, sizes: dict[str, TaskSize]) -> None:
    """The methods phase: baselines, plain rows (λ grids), data-aware helpers, searches."""
    Lt = cfg.tuned_layers
    rows = (3 + (cfg.probe_row and cfg.head != "probe") + cfg.train_head + len(plan.specs)
            + plan.adamerging + len(searches.search_rows(cfg)))
    val = plan.lam_rows * len(cfg.lam_grid) + n + search_evals(cfg)
    # A model's score on every task is one call over all tasks' examples; the
    # individual fine-tunes and the probe row are scored one task per call.
    # So are NPS fusion's per-task NPS-Pruning searches (each of their evaluations counts
    # as one all-task evaluation in search_evals, but is n single-task calls).
    per_task = 1 + (cfg.probe_row and cfg.head != "probe")
    fused = len(cfg.fusion_keeps) * config.nps_evals(cfg) if searches.enabled(
        cfg, "nps_fusion") else 0
    t.add("eval", S * (rows * test + val * vs),
          S * (rows - per_task + val + per_task * n + fused * (n - 1)))
    for spec in plan.specs:
        t.add(f"merge:{spec.method}", S * (2 if spec.lam_grid else 1) * n * P,
              S * (2 if spec.lam_grid else 1))
    t.add("merge", S * (plan.lam_rows * len(cfg.lam_grid) + search_evals(cfg) * n) * P)
    stats = sum(min(s.train, cfg.stats_batches * cfg.stats_batch) * s.tokens
                for s in sizes.values()) * Lt
    for kind in ("fisher", "regmean"):
        if any(s.method == kind for s in plan.specs):
            t.add(kind, S * stats, S * n)
    if plan.adamerging:
        kw = methods.adamerging_kwargs(cfg)
        batch_tokens = statistics.fmean(s.tokens for s in sizes.values()) * cfg.stats_batch
        n_batches = sum(math.ceil(s.val_search / cfg.stats_batch) for s in sizes.values())
        per_step = min(kw.get("batches_per_step") or n_batches, n_batches)
        t.add("adamerging", S * kw["steps"] * per_step * batch_tokens * Lt, S * kw["steps"])


def task_sizes(cfg: Config, names: list[str],
               lengths: Callable[[list[str]], list[int]]) -> dict[str, TaskSize]:
    """Split sizes and mean token counts of tasks ``names`` under ``cfg``
    (``lengths(texts) -> token counts``: the tokenizer only, no model run)."""
    import tasks

    out = {}
    for name in names:
        s = tasks.split(tasks.get(name), cfg.data_seed, cfg.max_train, cfg.max_val, cfg.max_test)
        texts = s.train[0] + s.val[0] + s.test[0]
        n_vs = len(s.val[0]) if cfg.val_search is None else min(cfg.val_search, len(s.val[0]))
        mean = sum(lengths(texts)) / max(len(texts), 1)
        out[name] = TaskSize(len(s.train[0]), len(s.val[0]), len(s.test[0]), n_vs, mean)
    return out

