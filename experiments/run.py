"""``make experiment`` / ``make demo``: the papers' comparisons on real small models, offline.

All fine-tunes start from the same pre-trained all-MiniLM-L6-v2; each task has
its own linear head (never merged); validation data is used only for tuning
and searches, test data only for the tables. Results go to
``experiments/results/`` (``results.md`` and PNG plots).

Usage: ``python experiments/run.py [--demo] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402
import model  # noqa: E402
import npsfuse  # noqa: E402

StateDict = dict[str, torch.Tensor]


@dataclass
class Config:
    """Everything that defines a run (written into results.md)."""

    tasks: list[str] = field(default_factory=lambda: list(data.TASKS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tuned_layers: int = 2
    max_len: int = 64
    max_train: int = 1000
    max_val: int = 300
    max_test: int = 1000
    val_search: int = 100  # validation examples per task seen by searches
    epochs: int = 2
    lr: float = 1e-4
    batch: int = 32
    budget: int = 48  # validation evaluations of a merged model per searching method
    keeps: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1, 0.2, 0.3])
    prune_generations: int = 6  # NPS search per task in the pruning study
    fusion_keeps: list[float] = field(default_factory=lambda: [0.05, 0.1])


DEMO = Config(tasks=["sms_spam", "tweets"], seeds=[0], max_train=400, max_val=150,
              max_test=300, val_search=60, epochs=2, budget=16, keeps=[0.05, 0.1],
              prune_generations=3, fusion_keeps=[0.1])


@dataclass
class TaskData:
    """One task of one seed: features of its splits and its heads."""

    name: str
    n_classes: int
    train: model.Features
    val: model.Features
    val_search: model.Features
    test: model.Features
    probe: model.Head | None = None
    head: model.Head | None = None


def _subset(f: model.Features, n: int) -> model.Features:
    return model.Features(f.hidden[:n], f.mask[:n], f.labels[:n])


class Study:
    """One seed of the study: fine-tunes, then every method on held-out data."""

    def __init__(self, cfg: Config, enc: model.Encoder, seed: int, log: Callable[[str], None]):
        self.cfg, self.enc, self.seed, self.log = cfg, enc, seed, log
        self.theta0 = enc.top_state()
        self.tasks: list[TaskData] = []
        self.finetuned: list[StateDict] = []
        self.times: dict[str, float] = {}
        self.histories: dict[str, list[dict]] = {}

    # -- setup -------------------------------------------------------------
    def prepare(self) -> None:
        c = self.cfg
        for name in c.tasks:
            s = data.load(name, self.seed, c.max_train, c.max_val, c.max_test)
            t0 = time.perf_counter()
            val = self.enc.features(*s.val)
            td = TaskData(name, s.n_classes, self.enc.features(*s.train), val,
                          _subset(val, c.val_search), self.enc.features(*s.test))
            td.probe = model.train_probe(self.enc, self.theta0, td.train, s.n_classes, 2, self.seed)
            theta, td.head = model.finetune(self.enc, self.theta0, td.probe, td.train, c.epochs,
                                            c.lr, c.batch, self.seed)
            self.tasks.append(td)
            self.finetuned.append(theta)
            self.log(f"seed {self.seed}: fine-tuned {name} in {time.perf_counter() - t0:.0f}s")

    # -- scoring -----------------------------------------------------------
    def test_acc(self, theta: StateDict, heads: str = "head") -> list[float]:
        return [model.accuracy(self.enc, theta, getattr(t, heads), t.test) for t in self.tasks]

    def val_score(self, theta: StateDict) -> float:
        """Mean validation accuracy over tasks (the searches' fitness)."""
        return statistics.fmean(model.accuracy(self.enc, theta, t.head, t.val_search)
                                for t in self.tasks)

    # -- the comparison ----------------------------------------------------
    def methods(self) -> dict[str, Callable[[], StateDict]]:
        th0, fts, c = self.theta0, self.finetuned, self.cfg
        have = set(npsfuse.methods())
        m: dict[str, Callable[[], StateDict]] = {
            "weight averaging": lambda: npsfuse.merge(th0, fts, "linear"),
            "task arithmetic (λ=0.3)": lambda: npsfuse.merge(th0, fts, "task_arithmetic", lam=0.3),
            "TIES (k=0.2)": lambda: npsfuse.merge(th0, fts, "ties", density=0.2),
            "DARE-TIES (p=0.3)": lambda: npsfuse.merge(th0, fts, "dare_ties", density=0.3,
                                                       normalize=True, seed=self.seed),
        }
        if "pcb" in have:
            m["PCB (k=0.2)"] = lambda: npsfuse.merge(th0, fts, "pcb", density=0.2)
        if "consensus_ties" in have:
            m["Consensus-TIES"] = lambda: npsfuse.merge(th0, fts, "consensus_ties", density=0.2)
        if "neuro" in have:
            m["NeuroMerging (no val.)"] = lambda: npsfuse.merge(th0, fts, "neuro")
            m["NeuroMerging (λ searched)"] = self._neuro_searched
        if hasattr(npsfuse, "nps"):
            for keep in c.fusion_keeps:
                m[f"NPS fusion (keep {keep})"] = lambda keep=keep: self._nps_fusion(keep)
        if hasattr(npsfuse, "Evolver"):
            m["Evolver with merger (TIES)"] = self._evolver
        if hasattr(npsfuse, "search_merge"):
            m["TIES λ,k by DE/CADE"] = lambda: self._search("de")
            m["TIES λ,k by CMA-ES"] = lambda: self._search("cma")
        return m

    def _neuro_searched(self) -> StateDict:
        best, best_s = None, -math.inf
        grid = [(l1, l2) for l1 in (0.0, 0.5, 1.0) for l2 in (0.5, 1.0, 1.5, 2.0, 3.0)]
        for l1, l2 in grid[: self.cfg.budget]:
            cand = npsfuse.merge(self.theta0, self.finetuned, "neuro", lam1=l1, lam2=l2)
            s = self.val_score(cand)
            if s > best_s:
                best, best_s = cand, s
        return best  # type: ignore[return-value]

    def _nps_fusion(self, keep: float) -> StateDict:
        nps = npsfuse.nps
        results = []
        per_task = max(1, self.cfg.budget // (2 * len(self.tasks)))
        for t, theta in zip(self.tasks, self.finetuned, strict=True):
            def ev(sd: StateDict, t: TaskData = t) -> float:
                return model.accuracy(self.enc, sd, t.head, t.val_search)
            results.append(nps.prune(self.theta0, theta, ev, keep=keep, generations=per_task,
                                     popsize=4, seed=self.seed, progress=False))
        out = nps.fuse(self.theta0, results, evaluate=self.val_score,
                       generations=max(1, self.cfg.budget // 8), seed=self.seed, progress=False)
        return out.state_dict() if hasattr(out, "state_dict") else out

    def _evolver(self) -> StateDict:
        gens = max(1, self.cfg.budget // len(self.finetuned))
        ev = npsfuse.Evolver(self.theta0, self.finetuned, self.val_score, merge="ties",
                             merge_params={"density": 0.2}, generations=gens, seed=self.seed,
                             progress=False)
        res = ev.run()
        self.histories["Evolver with merger"] = [dict(h) for h in res.history]
        return res.state_dict()

    def _search(self, optimizer: str) -> StateDict:
        res = npsfuse.search_merge(
            self.theta0, self.finetuned, "ties", self.val_score,
            params={"lam": (0.5, 2.0), "density": (0.05, 0.5)}, per_model=False,
            optimizer=optimizer, schedule="cosine", generations=max(1, self.cfg.budget // 8),
            popsize=8, seed=self.seed, progress=False)
        key = "DE/CADE" if optimizer == "de" else "CMA-ES"
        if hasattr(res, "history"):
            self.histories[key] = [dict(h) for h in res.history]
        return res.state_dict() if hasattr(res, "state_dict") else res

    def run_methods(self) -> dict[str, list[float]]:
        rows: dict[str, list[float]] = {
            "pre-trained (linear probe)": self.test_acc(self.theta0, "probe"),
            "pre-trained (fine-tuned heads)": self.test_acc(self.theta0),
            "individual fine-tunes": [model.accuracy(self.enc, th, t.head, t.test)
                                      for th, t in zip(self.finetuned, self.tasks, strict=True)],
        }
        for name, fn in self.methods().items():
            t0 = time.perf_counter()
            try:
                theta = fn()
            except Exception as exc:  # a method failing must not sink the study
                self.log(f"seed {self.seed}: {name} failed: {exc!r}")
                continue
            self.times[name] = time.perf_counter() - t0
            rows[name] = self.test_acc(theta)
            self.log(f"seed {self.seed}: {name}: mean test acc "
                     f"{statistics.fmean(rows[name]):.3f} ({self.times[name]:.1f}s)")
        return rows

    # -- pruning study -----------------------------------------------------
    def run_pruning(self) -> dict[str, dict[str, dict[float, float]]]:
        """Per task and keep ratio: test accuracy of θ₀ + pruned τ_t."""
        out: dict[str, dict[str, dict[float, float]]] = {}
        for t, theta in zip(self.tasks, self.finetuned, strict=True):

            res: dict[str, dict[float, float]] = {"magnitude top-k": {}, "DARE": {}, "NPS": {}}
            for keep in self.cfg.keeps:
                mag = npsfuse.merge(self.theta0, [theta], "magnitude_prune", density=keep)
                res["magnitude top-k"][keep] = model.accuracy(self.enc, mag, t.head, t.test)
                dare = npsfuse.merge(self.theta0, [theta], "dare_linear", density=keep,
                                     seed=self.seed)
                res["DARE"][keep] = model.accuracy(self.enc, dare, t.head, t.test)
                if hasattr(npsfuse, "nps"):
                    r = npsfuse.nps.prune(
                        self.theta0, theta,
                        lambda sd, t=t: model.accuracy(self.enc, sd, t.head, t.val_search),
                        keep=keep, generations=self.cfg.prune_generations, popsize=4,
                        seed=self.seed, progress=False)
                    res["NPS"][keep] = model.accuracy(self.enc, r.state_dict(), t.head, t.test)

            out[t.name] = res
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--demo", action="store_true", help="the short subset `make demo` runs")
    ap.add_argument("--out", default=None, help="results folder (default experiments/results)")
    args = ap.parse_args(argv)
    cfg = DEMO if args.demo else Config()
    out = Path(args.out or Path(__file__).resolve().parent / ("results-demo" if args.demo
                                                                  else "results"))
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    enc = model.Encoder(cfg.tuned_layers, cfg.max_len)
    per_seed = []
    for seed in cfg.seeds:
        torch.manual_seed(seed)
        st = Study(cfg, enc, seed, log)
        st.prepare()
        rows = st.run_methods()
        pruning = st.run_pruning()
        per_seed.append({"seed": seed, "rows": rows, "times": st.times, "pruning": pruning,
                         "histories": st.histories})
    total = time.perf_counter() - start
    import report

    report.write(out, asdict(cfg), cfg.tasks, per_seed, total)
    (out / "raw.json").write_text(json.dumps({"config": asdict(cfg), "seeds": per_seed,
                                              "seconds": total}, indent=1, default=str))
    log(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
