"""``make experiment`` / ``make demo``: the papers' comparisons on real small models, offline.

All fine-tunes start from the same pre-trained all-MiniLM-L6-v2; each task has
its own linear head (never merged); validation data is used only for tuning
and searches, test data only for the tables. Results go to
``experiments/results/`` (``results.md``, ``raw.json`` and PNG plots).

Every run times its phases, counts the work it did (tokens through the tuned
layers, validation evaluations, merges) and from those rates extrapolates the
wall time of the full default configuration on the same machine; the
estimate is written into the report.

Usage: ``python experiments/run.py [--demo] [--out DIR] [--seeds 0 1 ...]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402
import model  # noqa: E402
import npsfuse  # noqa: E402
from npsfuse import nps, reference  # noqa: E402

StateDict = dict[str, torch.Tensor]


@dataclass
class Config:
    """Everything that defines a run (written into results.md).

    The defaults are the full ``make experiment``, sized for ≤ 45 minutes on
    2 CPU cores (see :func:`estimate` and the report's runtime section).
    """

    tasks: list[str] = field(default_factory=lambda: ["sms_spam", "tweets", "movies", "bbc"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    data_seed: int = 0  # the train / validation / test splits (fixed for all seeds)
    tuned_layers: int = 2
    max_len: int = 64
    max_train: int = 500
    max_val: int = 200
    max_test: int = 300
    val_search: int = 48  # validation examples per task seen by searches
    epochs: int = 2
    lr: float = 1e-4
    batch: int = 32
    budget: int = 20  # validation evaluations (all tasks) per searching method
    popsize: int = 6  # DE / CMA-ES population of the λ, k searches
    keeps: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1, 0.2, 0.3])
    prune_evals: int = 9  # single-task validation evaluations per NPS-Pruning search
    fusion_keeps: list[float] = field(default_factory=lambda: [0.05, 0.1])


#: The short subset ``make demo`` runs (≤ 5 minutes on 2 cores).
DEMO = Config(tasks=["sms_spam", "tweets"], seeds=[0], max_train=300, max_val=100,
              max_test=300, val_search=48, budget=14, keeps=[0.02, 0.1, 0.3], prune_evals=5)

#: The miniature the test suite runs end to end (tests/test_experiment.py).
MINI = Config(tasks=["sms_spam", "tweets"], seeds=[0], max_train=128, max_val=32, max_test=96,
              val_search=16, epochs=2, lr=3e-4, budget=10, popsize=4, keeps=[0.1],
              prune_evals=5, fusion_keeps=[0.1])

NEURO_GRID = [(l1, l2) for l2 in (0.5, 1.0, 1.5, 2.0, 3.0) for l1 in (0.0, 0.5, 1.0)]
TIES_DENSITY = 0.2


# ------------------------------------------------------------ budget rules --


def evolver_generations(cfg: Config) -> int:
    """Generations of the Evolver with a merger: the merged start is evaluated
    once, then ``n`` trials per generation, within ``budget``."""
    return max(1, (cfg.budget - 1) // len(cfg.tasks))


def de_generations(cfg: Config) -> int:
    """DE evaluates its initial population, then ``popsize`` per generation."""
    return max(1, cfg.budget // cfg.popsize - 1)


def cma_generations(cfg: Config) -> int:
    """CMA-ES evaluates its start point, then ``popsize`` per generation."""
    return max(1, (cfg.budget - 1) // cfg.popsize)


def neuro_grid(cfg: Config) -> list[tuple[float, float]]:
    """The (λ₁, λ₂) points NeuroMerging-with-validation tries (≤ budget, spread evenly)."""
    if cfg.budget >= len(NEURO_GRID):
        return list(NEURO_GRID)
    idx = np.linspace(0, len(NEURO_GRID) - 1, max(1, cfg.budget)).round().astype(int)
    return [NEURO_GRID[i] for i in sorted(set(idx.tolist()))]


def fusion_popsize_generations(cfg: Config) -> tuple[int, int]:
    """NPS fusion: the per-task NPS-Pruning searches cost ``prune_evals`` single-task
    evaluations per task (= ``prune_evals`` all-task evaluations); the λ search of the
    fusion gets the rest of the budget (CMA-ES: 1 start + popsize per generation)."""
    pop = 4
    used = 1 + nps_generations(cfg)[0] * nps_generations(cfg)[1]
    return pop, max(1, (cfg.budget - used - 1) // pop)


def nps_generations(cfg: Config) -> tuple[int, int]:
    """NPS-Pruning's CMA-ES: population 4; the start, then 4 per generation,
    ``prune_evals`` evaluations in all."""
    pop = 4
    return pop, max(1, (cfg.prune_evals - 1) // pop)


def budget_rules(cfg: Config) -> list[str]:
    """The budget rules as sentences for the report (computed from ``cfg``)."""
    n = len(cfg.tasks)
    fp, fg = fusion_popsize_generations(cfg)
    pp, pg = nps_generations(cfg)
    return [
        "Methods without validation use their papers' / mergekit's defaults (in the method "
        f"name); TIES's density is {TIES_DENSITY}, plus TIES at each NPS fusion keep ratio.",
        f"Every method that searches on validation data gets at most **{cfg.budget}** "
        f"evaluations of a merged model on all {n} tasks' validation subsets "
        f"({cfg.val_search} examples per task; an evaluation on one task counts 1/{n}). "
        "The column *val. evals* of the table shows what each used.",
        f"NeuroMerging with validation: a grid of {len(neuro_grid(cfg))} (λ₁, λ₂) points.",
        f"Evolver with merger (TIES, density {TIES_DENSITY}): population = the {n} "
        f"fine-tunes, {evolver_generations(cfg)} generations.",
        f"TIES λ and density by DE with CADE's cosine F/CR schedule: population "
        f"{cfg.popsize}, {de_generations(cfg)} generations after the initial one; by CMA-ES: "
        f"population {cfg.popsize}, {cma_generations(cfg)} generations after the start point.",
        f"NPS-Pruning (pruning study and fusion): CMA-ES over 8 subspace weights, population "
        f"{pp}, {pg} generations per task and keep ratio ({cfg.prune_evals} single-task "
        f"evaluations); NPS fusion reuses those searches and spends the rest of the budget on "
        f"its λ search (population {fp}, {fg} generations).",
        "Magnitude top-k and DARE in the pruning study use no validation data (DARE's seed "
        "= the run's seed).",
    ]


# ------------------------------------------------------------- the meter --


class Meter:
    """Wall and CPU time per phase, and the work done in it.

    Work is counted as ``eval_tokens`` (tokens through the tuned layers in
    evaluation), ``eval_wall`` / ``eval_cpu`` (seconds spent in them),
    ``train_tokens`` (tokens through fine-tuning, forward + backward),
    ``feature_tokens`` (tokens through the frozen bottom) and ``merges``
    (merged models built, each weighted by the number of models merged).
    """

    KEYS = ("wall", "cpu", "eval_tokens", "eval_wall", "eval_cpu", "train_tokens",
            "feature_tokens", "merges")

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}
        self.current = "other"
        self.kernel_models = 0  # models merged in the kernels-vs-NumPy table

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Attribute the time and work inside the ``with`` block to ``name``."""
        row = self.phases.setdefault(name, dict.fromkeys(self.KEYS, 0.0))
        prev, self.current = self.current, name
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            row["wall"] += time.perf_counter() - w
            row["cpu"] += time.process_time() - c
            self.current = prev

    def add(self, key: str, amount: float) -> None:
        """Add ``amount`` of work ``key`` to the current phase."""
        self.phases.setdefault(self.current, dict.fromkeys(self.KEYS, 0.0))[key] += amount


# ------------------------------------------------------------------ data --


@dataclass
class TaskData:
    """One task: features of its splits (shared by every seed)."""

    name: str
    n_classes: int
    train: model.Features
    val: model.Features
    val_search: model.Features
    test: model.Features


@dataclass
class Heads:
    """One task's heads for one seed."""

    probe: model.Head
    head: model.Head


def _subset(f: model.Features, n: int) -> model.Features:
    return model.Features(f.hidden[:n], f.mask[:n], f.labels[:n])


def _tokens(f: model.Features) -> int:
    return int(f.mask.sum())


def load_tasks(cfg: Config, enc: model.Encoder, meter: Meter,
               log: Callable[[str], None]) -> list[TaskData]:
    """Split every task with ``cfg.data_seed`` and run the frozen bottom once."""
    out = []
    for i, name in enumerate(cfg.tasks):
        s = data.load(name, cfg.data_seed, cfg.max_train, cfg.max_val, cfg.max_test)
        feats = [enc.features(*split) for split in (s.train, s.val, s.test)]
        meter.add("feature_tokens", sum(_tokens(f) for f in feats))
        out.append(TaskData(name, s.n_classes, feats[0], feats[1],
                            _subset(feats[1], cfg.val_search), feats[2]))
        log(f"features [{i + 1}/{len(cfg.tasks)}] {name}: {len(s.train[0])} train / "
            f"{len(s.val[0])} val / {len(s.test[0])} test, {s.n_classes} classes")
    return out


# ----------------------------------------------------------------- study --


class Study:
    """One seed of the study: fine-tunes, then every method on held-out data."""

    def __init__(self, cfg: Config, enc: model.Encoder, tasks: list[TaskData], seed: int,
                 meter: Meter, log: Callable[[str], None]) -> None:
        self.cfg, self.enc, self.tasks, self.seed = cfg, enc, tasks, seed
        self.meter = meter
        self.log = lambda msg: log(f"seed {seed}: {msg}")
        self.theta0 = enc.top_state()
        self.heads: list[Heads] = []
        self.finetuned: list[StateDict] = []
        self.times: dict[str, float] = {}
        self.evals: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.histories: dict[str, list[dict[str, Any]]] = {}
        self.extra: dict[str, Any] = {}
        self._nps: dict[tuple[int, float], tuple[nps.NPSResult, float]] = {}
        self._counting = ""

    # -- scoring -----------------------------------------------------------
    def acc(self, theta: StateDict, head: model.Head, f: model.Features) -> float:
        """Accuracy of ``theta`` with ``head`` on ``f`` (counted in the meter)."""
        t0, c0 = time.perf_counter(), time.process_time()
        a = model.accuracy(self.enc, theta, head, f)
        self.meter.add("eval_wall", time.perf_counter() - t0)
        self.meter.add("eval_cpu", time.process_time() - c0)
        self.meter.add("eval_tokens", _tokens(f))
        return a

    def test_acc(self, theta: StateDict, probe: bool = False) -> list[float]:
        """Test accuracy on every task (fine-tuned heads, or the probes)."""
        return [self.acc(theta, h.probe if probe else h.head, t.test)
                for t, h in zip(self.tasks, self.heads, strict=True)]

    def val_score(self, theta: StateDict) -> float:
        """Mean validation accuracy over tasks (the searches' fitness)."""
        if self._counting:
            self.evals[self._counting] = self.evals.get(self._counting, 0.0) + 1.0
            self.meter.add("merges", len(self.tasks))
        return statistics.fmean(self.acc(theta, h.head, t.val_search)
                                for t, h in zip(self.tasks, self.heads, strict=True))

    def task_val_score(self, i: int) -> Callable[[StateDict], float]:
        """Validation accuracy on task ``i`` alone (NPS-Pruning's fitness)."""
        def ev(sd: StateDict) -> float:
            if self._counting:
                self.evals[self._counting] = (self.evals.get(self._counting, 0.0)
                                              + 1.0 / len(self.tasks))
                self.meter.add("merges", 1)
            return self.acc(sd, self.heads[i].head, self.tasks[i].val_search)
        return ev

    @contextmanager
    def counting(self, key: str) -> Iterator[None]:
        """Count validation evaluations inside the block under ``key``."""
        prev, self._counting = self._counting, key
        self.evals.setdefault(key, 0.0)
        try:
            yield
        finally:
            self._counting = prev

    # -- fine-tuning -------------------------------------------------------
    def prepare(self) -> None:
        """A linear probe and a fine-tune per task."""
        c = self.cfg
        for i, t in enumerate(self.tasks):
            t0 = time.perf_counter()
            probe = model.train_probe(self.enc, self.theta0, t.train, t.n_classes, 2, self.seed)
            self.meter.add("eval_tokens", _tokens(t.train))
            theta, head = model.finetune(self.enc, self.theta0, probe, t.train, c.epochs, c.lr,
                                         c.batch, self.seed)
            self.meter.add("train_tokens", c.epochs * _tokens(t.train))
            self.heads.append(Heads(probe, head))
            self.finetuned.append(theta)
            self.log(f"fine-tune [{i + 1}/{len(self.tasks)}] {t.name} "
                     f"({time.perf_counter() - t0:.0f}s)")

    # -- the comparison ----------------------------------------------------
    @staticmethod
    def method_names(cfg: Config) -> list[str]:
        """The row names of :meth:`methods` for ``cfg``, in order."""
        ties_ks = [TIES_DENSITY] + [k for k in cfg.fusion_keeps if k != TIES_DENSITY]
        return ["weight averaging", "task arithmetic (λ=0.3)",
                *[f"TIES (k={k})" for k in ties_ks], "DARE-TIES (p=0.3)", "PCB (k=0.2)",
                "Consensus-TIES (k=0.2)", "NeuroMerging (no val.)", "NeuroMerging (λ searched)",
                *[f"NPS fusion (keep {k})" for k in cfg.fusion_keeps],
                "Evolver with merger (TIES)", "TIES λ,k by DE/CADE", "TIES λ,k by CMA-ES"]

    def methods(self) -> dict[str, Callable[[], StateDict]]:
        """Every merging method compared, by its row name."""
        th0, fts, c = self.theta0, self.finetuned, self.cfg
        ties_ks = [TIES_DENSITY] + [k for k in c.fusion_keeps if k != TIES_DENSITY]
        m: dict[str, Callable[[], StateDict]] = {
            "weight averaging": lambda: npsfuse.merge(th0, fts, "linear"),
            "task arithmetic (λ=0.3)": lambda: npsfuse.merge(th0, fts, "task_arithmetic", lam=0.3),
        }
        for k in ties_ks:
            m[f"TIES (k={k})"] = lambda k=k: npsfuse.merge(th0, fts, "ties", density=k)
        m["DARE-TIES (p=0.3)"] = lambda: npsfuse.merge(th0, fts, "dare_ties", density=0.3,
                                                       normalize=True, seed=self.seed)
        m["PCB (k=0.2)"] = lambda: npsfuse.merge(th0, fts, "pcb", density=0.2)
        m["Consensus-TIES (k=0.2)"] = lambda: npsfuse.merge(th0, fts, "consensus_ties",
                                                            density=0.2)
        m["NeuroMerging (no val.)"] = lambda: npsfuse.merge(th0, fts, "neuro")
        m["NeuroMerging (λ searched)"] = self._neuro_searched
        for keep in c.fusion_keeps:
            m[f"NPS fusion (keep {keep})"] = lambda keep=keep: self._nps_fusion(keep)
        m["Evolver with merger (TIES)"] = self._evolver
        m["TIES λ,k by DE/CADE"] = lambda: self._search("de")
        m["TIES λ,k by CMA-ES"] = lambda: self._search("cma")
        assert list(m) == self.method_names(c)
        return m

    def _neuro_searched(self) -> StateDict:
        best, best_s = None, -math.inf
        for l1, l2 in neuro_grid(self.cfg):
            cand = npsfuse.merge(self.theta0, self.finetuned, "neuro", lam1=l1, lam2=l2)
            s = self.val_score(cand)
            if s > best_s:
                best, best_s = cand, s
        return best  # type: ignore[return-value]

    def nps_prune(self, i: int, keep: float) -> tuple[nps.NPSResult, float]:
        """NPS-Pruning of task ``i``'s fine-tune at ``keep`` (searched once, cached).

        Returns the result and the seconds its search took.
        """
        key = (i, keep)
        if key not in self._nps:
            pop, gens = nps_generations(self.cfg)
            t0 = time.perf_counter()
            with self.counting(f"NPS-Pruning (keep {keep})"):
                r = nps.prune(self.theta0, self.finetuned[i], self.task_val_score(i), keep=keep,
                              generations=gens, popsize=pop, seed=self.seed, progress=False)
            self._nps[key] = (r, time.perf_counter() - t0)
        return self._nps[key]

    def _nps_fusion(self, keep: float) -> StateDict:
        name = f"NPS fusion (keep {keep})"
        results, search_s = [], 0.0
        for i in range(len(self.tasks)):
            r, secs = self.nps_prune(i, keep)
            results.append(r)
            search_s += secs
        # The fusion is charged the per-task searches it reuses.
        self.evals[name] = self.evals.get(name, 0.0) + self.evals.get(
            f"NPS-Pruning (keep {keep})", 0.0)
        self.extra.setdefault("fusion_reused_s", {})[name] = search_s
        pop, gens = fusion_popsize_generations(self.cfg)
        with self.counting(name):
            out = nps.fuse(self.theta0, results, evaluate=self.val_score, generations=gens,
                           popsize=pop, seed=self.seed, progress=False)
        return out.state_dict() if hasattr(out, "state_dict") else out

    def _evolver(self) -> StateDict:
        with self.counting("Evolver with merger (TIES)"):
            ev = npsfuse.Evolver(self.theta0, self.finetuned, self.val_score, merge="ties",
                                 merge_params={"density": TIES_DENSITY},
                                 generations=evolver_generations(self.cfg), seed=self.seed,
                                 progress=False)
            res = ev.run()
        self.histories["Evolver with merger"] = [dict(h) for h in res.history]
        return res.state_dict()

    def _search(self, optimizer: str) -> StateDict:
        name = "TIES λ,k by DE/CADE" if optimizer == "de" else "TIES λ,k by CMA-ES"
        gens = de_generations(self.cfg) if optimizer == "de" else cma_generations(self.cfg)
        with self.counting(name):
            res = npsfuse.search_merge(
                self.theta0, self.finetuned, "ties", self.val_score,
                params={"lam": (0.5, 2.0), "density": (0.05, 0.5)}, per_model=False,
                optimizer=optimizer, schedule="cosine", generations=gens,
                popsize=self.cfg.popsize, seed=self.seed, progress=False)
        hist = [dict(h) for h in res.history]
        if optimizer == "de":
            # CADE's documented schedule (npsfuse.optim.cosine_schedule, defaults 0.9 → 0.1):
            # F(g) = F_min + ½(F_max − F_min)(1 + cos(π g / t)), likewise CR, t = generations.
            for h in hist:
                v = 0.1 + 0.5 * 0.8 * (1 + math.cos(math.pi * h["generation"] / gens))
                h["F"] = h["CR"] = v
        self.histories["DE/CADE" if optimizer == "de" else "CMA-ES"] = hist
        self.extra.setdefault("searched_params", {})[name] = {
            k: (float(v) if isinstance(v, (int, float)) else v) for k, v in res.params.items()}
        return res.state_dict()

    def run_methods(self) -> dict[str, list[float]]:
        """Test accuracy per task of the baselines and of every method."""
        n = len(self.tasks)
        rows: dict[str, list[float]] = {
            "pre-trained (linear probe)": self.test_acc(self.theta0, probe=True),
            "pre-trained (fine-tuned heads)": self.test_acc(self.theta0),
            "individual fine-tunes": [self.acc(th, h.head, t.test) for th, h, t in
                                      zip(self.finetuned, self.heads, self.tasks, strict=True)],
        }
        # The Evolver's parents scored as it scores them; the best one on test.
        parent_val = [self.val_score(th) for th in self.finetuned]
        best = int(np.argmax(parent_val))
        self.extra["best_parent"] = self.tasks[best].name
        rows["best single fine-tune (by val.)"] = self.test_acc(self.finetuned[best])
        methods = self.methods()
        for j, (name, fn) in enumerate(methods.items()):
            t0 = time.perf_counter()
            self.log(f"method [{j + 1}/{len(methods)}] {name} ...")
            try:
                searching = name in ("NeuroMerging (λ searched)",)
                with self.counting(name) if searching else _nothing():
                    theta = fn()
            except Exception as exc:  # a method failing must not sink the study
                self.failed[name] = repr(exc)
                self.log(f"method {name} FAILED: {exc!r}")
                continue
            if name not in self.evals:
                self.meter.add("merges", n)
            self.times[name] = time.perf_counter() - t0 + self.extra.get(
                "fusion_reused_s", {}).get(name, 0.0)
            rows[name] = self.test_acc(theta)
            ev = self.evals.get(name)
            self.log(f"method [{j + 1}/{len(methods)}] {name}: mean test acc "
                     f"{statistics.fmean(rows[name]):.3f} ({self.times[name]:.1f}s"
                     + (f", {ev:.1f} val. evals)" if ev is not None else ")"))
        return rows

    # -- pruning study -----------------------------------------------------
    def run_pruning(self) -> dict[str, dict[str, dict[float, float]]]:
        """Per task and keep ratio: test accuracy of θ₀ + pruned τ_t."""
        out: dict[str, dict[str, dict[float, float]]] = {}
        for i, (t, theta, h) in enumerate(zip(self.tasks, self.finetuned, self.heads,
                                              strict=True)):
            t0 = time.perf_counter()
            res: dict[str, dict[float, float]] = {"NPS": {}, "magnitude top-k": {}, "DARE": {}}
            for keep in self.cfg.keeps:
                mag = npsfuse.merge(self.theta0, [theta], "magnitude_prune", density=keep)
                res["magnitude top-k"][keep] = self.acc(mag, h.head, t.test)
                dare = npsfuse.merge(self.theta0, [theta], "dare_linear", density=keep,
                                     seed=self.seed)
                res["DARE"][keep] = self.acc(dare, h.head, t.test)
                self.meter.add("merges", 2)
                try:
                    r, _ = self.nps_prune(i, keep)
                    res["NPS"][keep] = self.acc(r.state_dict(), h.head, t.test)
                except Exception as exc:
                    self.failed[f"NPS-Pruning {t.name} keep {keep}"] = repr(exc)
                    self.log(f"NPS-Pruning {t.name} keep {keep} FAILED: {exc!r}")
            out[t.name] = res
            self.log(f"pruning [{i + 1}/{len(self.tasks)}] {t.name} "
                     f"({time.perf_counter() - t0:.0f}s)")
        return out

    # -- the kernels against the NumPy reference ---------------------------
    def kernel_table(self) -> list[dict[str, Any]]:
        """Every merge method on these fine-tunes: time and max |Δ| vs the NumPy reference."""
        params = {"density": 0.3, "lam": 1.0, "seed": 0}
        base_np = {k: v.numpy() for k, v in self.theta0.items()}
        rows = []
        for method in npsfuse.methods():
            models = self.finetuned[:2] if method == "slerp" else self.finetuned
            t0 = time.perf_counter()
            merged = npsfuse.merge(self.theta0, models, method, **params)
            ms = 1e3 * (time.perf_counter() - t0)
            diff = ref_ms = None
            if method in reference.METHODS:
                t0 = time.perf_counter()
                ref = reference.merge(base_np, [{k: v.numpy() for k, v in sd.items()}
                                                for sd in models], method, **params)
                ref_ms = 1e3 * (time.perf_counter() - t0)
                diff = max(float(np.abs(merged[k].numpy() - ref[k]).max()) for k in ref)
            rows.append({"method": method, "models": len(models), "ms": ms, "ref_ms": ref_ms,
                         "max_abs_diff": diff})
        return rows


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# -------------------------------------------------------------- estimate --


def task_stats(cfg: Config, enc: model.Encoder) -> dict[str, dict[str, float]]:
    """Per task: split sizes and mean token count (tokenizer only, no model run)."""
    out = {}
    for name in cfg.tasks:
        s = data.load(name, cfg.data_seed, cfg.max_train, cfg.max_val, cfg.max_test)
        texts = s.train[0] + s.val[0] + s.test[0]
        out[name] = {"train": len(s.train[0]), "val": len(s.val[0]), "test": len(s.test[0]),
                     "val_search": min(cfg.val_search, len(s.val[0])),
                     "len": statistics.fmean(enc.lengths(texts)) if texts else 0.0}
    return out


def workload(cfg: Config, stats: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The work of each phase of a run of ``cfg`` (same units as :class:`Meter`),
    computed from the budget rules, without running anything.

    Parameters
    ----------
    cfg
        The configuration.
    stats
        :func:`task_stats` of ``cfg``.

    Returns
    -------
    dict
        phase → work key → amount, for the whole run (all seeds).
    """
    n, S, K = len(cfg.tasks), len(cfg.seeds), len(cfg.keeps)
    tok = {part: sum(stats[t][part] * stats[t]["len"] for t in cfg.tasks)
           for part in ("train", "val", "test", "val_search")}
    ties_rows = 1 + len([k for k in cfg.fusion_keeps if k != TIES_DENSITY])
    fixed_rows = 1 + 1 + ties_rows + 4  # averaging, TA, TIES…, DARE-TIES, PCB, Consensus, Neuro
    searches = {
        "neuro": len(neuro_grid(cfg)),
        "evolver": 1 + n * evolver_generations(cfg),
        "de": cfg.popsize * (1 + de_generations(cfg)),
        "cma": 1 + cfg.popsize * cma_generations(cfg),
    }
    fpop, fgens = fusion_popsize_generations(cfg)
    fuse_evals = (1 + fpop * fgens) * len(cfg.fusion_keeps)
    ppop, pgens = nps_generations(cfg)
    prune_evals = 1 + ppop * pgens  # per task and keep
    searched_rows = 4 + len(cfg.fusion_keeps)
    test_rows = 3 + 1 + fixed_rows + searched_rows  # baselines, best parent, methods
    full_evals = sum(searches.values()) + fuse_evals + n  # + the parents' validation scores
    # NPS-Pruning searches run once per (task, keep): the fusion's keeps in the methods
    # phase, the pruning study's other keeps in the pruning phase.
    fusion_searches = len(cfg.fusion_keeps)
    pruning_searches = len([k for k in cfg.keeps if k not in cfg.fusion_keeps])
    return {
        "load model": {},
        "features": {"feature_tokens": tok["train"] + tok["val"] + tok["test"]},
        "fine-tune": {"train_tokens": S * cfg.epochs * tok["train"],
                      "eval_tokens": S * tok["train"]},
        "methods": {"eval_tokens": S * (test_rows * tok["test"] + (
                        full_evals + fusion_searches * prune_evals) * tok["val_search"]),
                    "merges": S * n * (fixed_rows + full_evals + fusion_searches * prune_evals)},
        "pruning": {"eval_tokens": S * (K * 3 * tok["test"]
                                        + pruning_searches * prune_evals * tok["val_search"]),
                    "merges": S * n * (2 * K + pruning_searches * prune_evals)},
        "kernels vs NumPy": {"runs": 1.0, "models": n},
    }


def rates(meter: Meter) -> dict[str, float]:
    """Seconds per unit of work, from a run's meter (wall and CPU)."""
    ph = meter.phases
    out: dict[str, float] = {}
    for clock in ("wall", "cpu"):
        ev_tok = sum(p["eval_tokens"] for p in ph.values())
        r_eval = sum(p[f"eval_{clock}"] for p in ph.values()) / max(ev_tok, 1)
        out[f"{clock}_eval"] = r_eval
        ft = ph.get("fine-tune", dict.fromkeys(Meter.KEYS, 0.0))
        out[f"{clock}_train"] = max(0.0, ft[clock] - r_eval * ft["eval_tokens"]) / max(
            ft["train_tokens"], 1)
        fe = ph.get("features", dict.fromkeys(Meter.KEYS, 0.0))
        out[f"{clock}_feature"] = fe[clock] / max(fe["feature_tokens"], 1)
        rest = [ph[k] for k in ("methods", "pruning") if k in ph]
        over = sum(max(0.0, p[clock] - r_eval * p["eval_tokens"]) for p in rest)
        out[f"{clock}_merge"] = over / max(sum(p["merges"] for p in rest), 1)
        out[f"{clock}_load"] = ph.get("load model", {clock: 0.0})[clock]
        kt = ph.get("kernels vs NumPy", {clock: 0.0})
        out[f"{clock}_kernels_per_model"] = kt[clock] / max(meter.kernel_models, 1)
    return out


def estimate(work: dict[str, dict[str, float]], r: dict[str, float],
             clock: str = "wall") -> dict[str, float]:
    """Seconds per phase of ``work`` at the rates ``r`` (see :func:`rates`)."""
    out = {}
    for phase, w in work.items():
        s = (w.get("feature_tokens", 0.0) * r[f"{clock}_feature"]
             + w.get("train_tokens", 0.0) * r[f"{clock}_train"]
             + w.get("eval_tokens", 0.0) * r[f"{clock}_eval"]
             + w.get("merges", 0.0) * r[f"{clock}_merge"]
             + w.get("models", 0.0) * r[f"{clock}_kernels_per_model"])
        if phase == "load model":
            s = r[f"{clock}_load"]
        out[phase] = s
    return out


# ------------------------------------------------------------------ main --


def run(cfg: Config, out: Path, log: Callable[[str], None] | None = None,
        full: Config | None = None) -> dict[str, Any]:
    """Run the whole study for ``cfg`` and write the report into ``out``.

    Parameters
    ----------
    cfg
        The configuration to run.
    out
        The results folder (created).
    log
        Progress sink (default: print with the elapsed time).
    full
        The configuration whose runtime to extrapolate in the report
        (default: the full default :class:`Config`).

    Returns
    -------
    dict
        Everything written into ``raw.json``.
    """
    out.mkdir(parents=True, exist_ok=True)
    load_start = list(os.getloadavg())
    start = time.perf_counter()
    cpu_start = time.process_time()

    def _print(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    log = log or _print
    meter = Meter()
    log(f"loading all-MiniLM-L6-v2 (top {cfg.tuned_layers} layers tuned); tasks "
        f"{', '.join(cfg.tasks)}; seeds {cfg.seeds}")
    with meter.phase("load model"):
        enc = model.Encoder(cfg.tuned_layers, cfg.max_len)
    with meter.phase("features"):
        tasks = load_tasks(cfg, enc, meter, log)
    per_seed = []
    kernels: list[dict[str, Any]] = []
    for si, seed in enumerate(cfg.seeds):
        log(f"seed {seed} [{si + 1}/{len(cfg.seeds)}]")
        torch.manual_seed(seed)
        st = Study(cfg, enc, tasks, seed, meter, log)
        with meter.phase("fine-tune"):
            st.prepare()
        with meter.phase("methods"):
            rows = st.run_methods()
        with meter.phase("pruning"):
            pruning = st.run_pruning()
        if si == 0:
            log("merge kernels vs the NumPy reference on these fine-tunes")
            with meter.phase("kernels vs NumPy"):
                kernels = st.kernel_table()
            meter.kernel_models = len(tasks)
            _print_kernels(kernels, log)
        per_seed.append({"seed": seed, "rows": rows, "times": st.times, "evals": st.evals,
                         "failed": st.failed, "pruning": pruning, "histories": st.histories,
                         "extra": st.extra})
    total = time.perf_counter() - start
    cpu_total = time.process_time() - cpu_start
    r = rates(meter)
    full = full or Config()
    est = {}
    with meter.phase("estimate"):
        for name, c in (("this run", cfg), ("full `make experiment`", full)):
            w = workload(c, task_stats(c, enc))
            est[name] = {"work": w, "wall": estimate(w, r, "wall"), "cpu": estimate(w, r, "cpu")}
    raw = {"config": asdict(cfg), "full_config": asdict(full), "seeds": per_seed,
           "seconds": total, "cpu_seconds": cpu_total, "phases": meter.phases, "rates": r,
           "load_average": {"start": load_start, "end": list(os.getloadavg())},
           "estimates": est, "kernels": kernels, "threads": torch.get_num_threads(),
           "budget_rules": budget_rules(cfg),
           "test_sizes": {t.name: len(t.test.labels) for t in tasks},
           "best_parent": [p["extra"].get("best_parent") for p in per_seed]}
    import report

    report.write(out, raw)
    (out / "raw.json").write_text(json.dumps(raw, indent=1, default=str))
    log(f"done in {total / 60:.1f} min wall, {cpu_total / 60:.1f} min CPU; estimated full run "
        f"at this run's rates: {sum(est['full `make experiment`']['wall'].values()) / 60:.1f}"
        f" min; results in {out}")
    return raw


def _print_kernels(rows: list[dict[str, Any]], log: Callable[[str], None]) -> None:
    log(f"{'method':<18}{'models':>7}{'time (ms)':>11}{'NumPy (ms)':>12}{'max |Δ| vs NumPy':>18}")
    for k in rows:
        ref = f"{k['ref_ms']:12.1f}" if k["ref_ms"] is not None else f"{'':>12}"
        d = f"{k['max_abs_diff']:18.2e}" if k["max_abs_diff"] is not None else f"{'n/a':>18}"
        log(f"{k['method']:<18}{k['models']:>7}{k['ms']:11.1f}{ref}{d}")


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python experiments/run.py [--demo] [--out DIR] [--seeds ...]``."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", action="store_true", help="the short subset `make demo` runs")
    ap.add_argument("--out", default=None,
                    help="results folder (default experiments/results, or results-demo)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    args = ap.parse_args(argv)
    cfg = DEMO if args.demo else Config()
    if args.seeds:
        cfg = replace(cfg, seeds=args.seeds)
    here = Path(__file__).resolve().parent
    out = Path(args.out) if args.out else here / ("results-demo" if args.demo else "results")
    run(cfg, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
