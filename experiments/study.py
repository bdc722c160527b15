"""One run of the study: data, heads and fine-tunes, then every method on held-out data.

:func:`run` loads the model and the tasks' features once, then per seed
(:class:`Study`) builds the task heads, fine-tunes one model per task and
scores every method, the pruning study and the out-of-domain check;
validation data is used only to choose λ and by searches, test data only
for the tables. It writes ``results.md``, ``raw.json`` and the plots.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import config
import cost
import methods
import model
import names
import npsfuse
import numpy as np
import pruning
import searches
import tasks
import torch
from config import Config
from model import Features
from npsfuse import reference

StateDict = dict[str, torch.Tensor]
Log = Callable[[str], None]


@dataclass
class TaskData:
    """One task's features (shared by every seed)."""

    task: tasks.Task
    train: Features
    val: Features
    val_search: Features
    test: Features


class Evaluator:
    """Scores models on the tasks' splits and counts validation evaluations.

    Parameters
    ----------
    enc
        The encoder (its tuned top runs with each model's weights).
    data
        The tasks' features.
    heads
        The head of each task (fixed for every model scored).
    meter
        Where evaluation work is counted.
    cfg
        The configuration (tuned layers, evaluation batch).
    """

    def __init__(self, enc: model.Encoder, data: list[TaskData], heads: list[torch.nn.Module],
                 meter: cost.Meter, cfg: Config) -> None:
        self.enc, self.data, self.heads, self.meter, self.cfg = enc, data, heads, meter, cfg
        self.evals: dict[str, float] = {}
        self._counting = ""
        self._joint: dict[str, tuple[Features, list[int]]] = {}

    def accuracy(self, theta: StateDict, head: torch.nn.Module, f: Features,
                 task: tasks.Task) -> float:
        """``task``'s metric of ``theta`` with ``head`` on features ``f``."""
        with self.meter.work("eval", f.tokens() * self.cfg.tuned_layers):
            pred, y = model.predict(self.enc, theta, head, f, self.cfg.eval_batch)
        return tasks.METRICS[task.metric](pred, y)

    def task_acc(self, theta: StateDict, i: int, split: str) -> float:
        """Task ``i``'s metric on ``split`` (``val``, ``val_search``, ``test``)."""
        d = self.data[i]
        return self.accuracy(theta, self.heads[i], getattr(d, split), d.task)

    def all_tasks(self, theta: StateDict, split: str) -> list[float]:
        """Every task's metric of ``theta`` on ``split``, from one pass over
        all tasks' examples together (batched by length across tasks: one
        call instead of one per task, and less padding)."""
        if split not in self._joint:
            fs = [getattr(d, split) for d in self.data]
            ends = np.cumsum([len(f) for f in fs]).tolist()
            self._joint[split] = (model.concat(fs), [0, *ends])
        f, bounds = self._joint[split]
        with self.meter.work("eval", f.tokens() * self.cfg.tuned_layers):
            z = model.embed_in_order(self.enc, theta, f, self.cfg.eval_batch)
        out = []
        with torch.inference_mode():
            for i, d in enumerate(self.data):
                lo, hi = bounds[i], bounds[i + 1]
                pred = self.heads[i](z[lo:hi]).argmax(1)
                out.append(tasks.METRICS[d.task.metric](pred, f.labels[lo:hi]))
        return out

    def test(self, theta: StateDict) -> list[float]:
        """Test metric of ``theta`` on every task."""
        return self.all_tasks(theta, "test")

    def val_score(self, theta: StateDict) -> float:
        """Mean validation metric over tasks (the searches' fitness; counted)."""
        if self._counting:
            self.evals[self._counting] = self.evals.get(self._counting, 0.0) + 1.0
        return statistics.fmean(self.all_tasks(theta, "val_search"))

    def task_val_score(self, i: int) -> Callable[[StateDict], float]:
        """Validation metric of task ``i`` alone (NPS-Pruning's fitness; counts 1/T)."""
        def score(theta: StateDict) -> float:
            if self._counting:
                self.evals[self._counting] = (self.evals.get(self._counting, 0.0)
                                              + 1.0 / len(self.data))
            return self.task_acc(theta, i, "val_search")
        return score

    @contextmanager
    def counting(self, key: str) -> Iterator[None]:
        """Count validation evaluations inside the block under ``key``."""
        prev, self._counting = self._counting, key
        self.evals.setdefault(key, 0.0)
        try:
            yield
        finally:
            self._counting = prev


@dataclass
class Shared:
    """What every seed shares: the encoder, θ₀, features and seed-free head inputs."""

    cfg: Config
    enc: model.Encoder
    meter: cost.Meter
    data: list[TaskData]
    ood: TaskData | None
    prompts: dict[str, torch.Tensor]  # task → class-prompt embeddings (C, H)
    probe_inputs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # task → θ₀ train embeddings


class Study:
    """One seed of the study."""

    def __init__(self, sh: Shared, seed: int, log: Log) -> None:
        self.sh, self.cfg, self.enc, self.data = sh, sh.cfg, sh.enc, sh.data
        self.tasks = [d.task for d in sh.data]
        self.meter, self.seed = sh.meter, seed
        self.log: Log = lambda msg: log(f"seed {seed}: {msg}")
        self.theta0 = sh.enc.top_state()
        self.n_params = sum(v.numel() for v in self.theta0.values())
        self.heads: list[torch.nn.Module] = []
        self.initial_heads: list[torch.nn.Module] = []
        self.finetuned: list[StateDict] = []
        self.rows: dict[str, list[float]] = {}
        self.times: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.histories: dict[str, list[dict[str, Any]]] = {}
        self.lam_info: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}
        self.cache: dict[str, Any] = {}
        self.reused_seconds: dict[str, float] = {}
        self.kept: dict[str, StateDict] = {}
        self.ev = Evaluator(sh.enc, sh.data, self.heads, sh.meter, sh.cfg)

    # -- heads and fine-tunes ------------------------------------------------
    def head_for(self, task: tasks.Task) -> torch.nn.Module:
        """The task's initial head: zero-shot prompts, or a probe on θ₀ (seeded)."""
        if self.cfg.head == "zeroshot":
            return model.ZeroShotHead(self.sh.prompts[task.name], self.cfg.zs_scale)
        return self.probe(task)

    def probe(self, task: tasks.Task) -> torch.nn.Module:
        """A linear probe on θ₀'s embeddings of the task's training set."""
        z, y = self.sh.probe_inputs[task.name]
        return model.train_probe(z, y, task.n_classes, self.cfg.probe_passes, self.seed)

    def prepare(self) -> None:
        """The heads, then one fine-tune per task (head held fixed unless ``train_head``)."""
        c = self.cfg
        ts = model.TrainSettings(c.epochs, c.lr, c.batch, c.weight_decay, c.lr_schedule,
                                 c.train_head)
        for i, d in enumerate(self.data):
            t0 = time.perf_counter()
            head = self.head_for(d.task)
            with self.meter.work("train", c.epochs * d.train.tokens() * c.tuned_layers):
                theta, trained = model.finetune(self.enc, self.theta0, head, d.train, ts,
                                                self.seed)
            self.initial_heads.append(head)
            self.heads.append(trained)
            self.finetuned.append(theta)
            self.log(f"fine-tune [{i + 1}/{len(self.data)}] {d.task.name} "
                     f"({time.perf_counter() - t0:.0f}s)")

    def input_batches(self, f: Features, n_batches: int | None,
                      batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Unlabelled (hidden, mask) batches of ``f``: ``n_batches`` × ``batch``
        examples drawn with the seed (all of ``f`` for None), by length."""
        idx = torch.arange(len(f))
        if n_batches is not None:
            g = torch.Generator().manual_seed(self.seed)
            idx = torch.randperm(len(f), generator=g)[: n_batches * batch]
        return [(h, m) for h, m, _ in model.batches(f, model.by_length(f, idx), batch)]

    def check_top_untouched(self) -> None:
        """The encoder's own top must still hold θ₀ (helpers take weights by
        ``params``); restore it and record the problem otherwise."""
        own = self.enc.top.state_dict()
        if any(not torch.equal(own[k], v) for k, v in self.theta0.items()):
            self.enc.top.load_state_dict(self.theta0)
            self.failed["θ₀ check"] = "a helper changed the encoder's weights; restored"

    # -- rows -----------------------------------------------------------------
    def record(self, name: str, fn: Callable[[], StateDict], keep: bool = False) -> None:
        """Build row ``name``'s model (validation evaluations counted under its
        name), score it on every task's test set and record the result."""
        t0 = time.perf_counter()
        try:
            with self.ev.counting(name):
                theta = fn()
        except Exception as exc:  # noqa: BLE001 - a failing method must not sink the study
            self.failed[name] = repr(exc)
            self.log(f"{name} FAILED: {exc!r}")
            return
        self.times[name] = time.perf_counter() - t0 + self.reused_seconds.get(name, 0.0)
        self.rows[name] = self.ev.test(theta)
        if keep:
            self.kept[name] = theta
        info = self.lam_info.get(name)
        self.log(f"{name}: mean test {statistics.fmean(self.rows[name]):.3f} "
                 f"({self.times[name]:.1f}s, {self.ev.evals[name]:.1f} val. evals"
                 + (f", λ*={info['lam']}" if info else "") + ")")

    def baselines(self) -> None:
        """θ₀ with the heads, the probe row, the individual fine-tunes, the best parent."""
        self.rows[names.PRETRAINED] = self.ev.test(self.theta0)
        if self.cfg.train_head:
            self.rows[names.PRETRAINED_INITIAL] = [
                self.ev.accuracy(self.theta0, h, d.test, d.task)
                for h, d in zip(self.initial_heads, self.data, strict=True)]
        if self.cfg.probe_row and self.cfg.head != "probe":
            self.rows[names.PROBE] = [self.ev.accuracy(self.theta0, self.probe(d.task), d.test,
                                                       d.task) for d in self.data]
        self.rows[names.INDIVIDUAL] = [self.ev.task_acc(th, i, "test")
                                       for i, th in enumerate(self.finetuned)]
        parent_val = [self.ev.val_score(th) for th in self.finetuned]
        best = int(np.argmax(parent_val))
        self.extra["best_parent"] = self.tasks[best].name
        self.rows[names.BEST_PARENT] = self.ev.test(self.finetuned[best])
        self.kept[names.BEST_PARENT] = self.finetuned[best]

    def run_methods(self) -> dict[str, str]:
        """Every plain merge (λ on the grid where it has one), AdaMerging and
        every search. Returns the methods skipped, with reasons."""
        plan = methods.plan(self.cfg)
        keep = {names.AVERAGING, names.lam_row("ties", self.cfg.density)}
        for spec in plan.specs:
            self.record(spec.row, lambda spec=spec: methods.run_spec(self, spec),
                        keep=spec.row in keep)
        if plan.adamerging:
            self.record(names.ADAMERGING, lambda: methods.adamerging(self))
        for name, fn in searches.searches(self).items():
            self.record(name, fn, keep=name == names.EVOLVER)
        return plan.skipped

    # -- out of domain --------------------------------------------------------
    def out_of_domain(self) -> dict[str, Any] | None:
        """The models of the Evolver comparison scored on a task outside the population."""
        od = self.sh.ood
        if od is None:
            return None
        head = self.head_for(od.task)
        out = {"task": od.task.name, "family": od.task.family, "rows": {}}
        models = {names.PRETRAINED: self.theta0,
                  **{f"fine-tune on {d.task.name}": th
                     for d, th in zip(self.data, self.finetuned, strict=True)},
                  **{k: v for k, v in self.kept.items() if k != names.BEST_PARENT}}
        for name, theta in models.items():
            out["rows"][name] = self.ev.accuracy(theta, head, od.test, od.task)
        self.log(f"out of domain ({od.task.name}): " + ", ".join(
            f"{k} {v:.3f}" for k, v in out["rows"].items()))
        return out

    # -- the kernels against the NumPy reference ------------------------------
    def kernel_table(self) -> list[dict[str, Any]]:
        """Every merge method on these fine-tunes: time and max |Δ| vs the NumPy reference."""
        params: dict[str, Any] = {"density": 0.3, "lam": 1.0, "seed": 0}
        base_np = {k: v.numpy() for k, v in self.theta0.items()}
        rows = []
        for method in npsfuse.methods():
            hi = methods.model_bounds(method)[1]
            models = self.finetuned[:hi] if hi else self.finetuned
            extra: dict[str, Any] = {"t": 0.05} if method == "nearswap" else {}
            if method in methods.DATA_AWARE:
                stats = self.cache.get(f"stats:{method}")
                if not stats:
                    continue
                extra["statistics"] = stats
            row: dict[str, Any] = {"method": method, "models": len(models), "ms": None,
                                   "ref_ms": None, "max_abs_diff": None}
            try:
                t0 = time.perf_counter()
                used = {k: v for k, v in params.items()
                        if k != "density" or methods.uses_density(method)}  # others refuse it
                merged = npsfuse.merge(self.theta0, models, method, **used, **extra)
                row["ms"] = 1e3 * (time.perf_counter() - t0)
                if method in reference.METHODS and not extra:
                    t0 = time.perf_counter()
                    ref = reference.merge(base_np, [{k: v.numpy() for k, v in sd.items()}
                                                    for sd in models], method, **params)
                    row["ref_ms"] = 1e3 * (time.perf_counter() - t0)
                    row["max_abs_diff"] = max(float(np.abs(merged[k].numpy() - ref[k]).max())
                                              for k in ref)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                row["error"] = repr(exc)
            rows.append(row)
        return rows

    def result(self, skipped: dict[str, str], pruned: dict[str, Any],
               ood: dict[str, Any] | None) -> dict[str, Any]:
        """Everything this seed measured, for raw.json."""
        return {"seed": self.seed, "rows": self.rows, "times": self.times,
                "evals": self.ev.evals, "failed": self.failed, "lam": self.lam_info,
                "histories": self.histories, "extra": self.extra, "skipped": skipped,
                "pruning": pruned, "ood": ood}


# ------------------------------------------------------------------ shared --


def resolve_ood(cfg: Config) -> tuple[tasks.Task | None, str]:
    """The out-of-domain task (or None) and a sentence saying why."""
    fams = {tasks.get(t).family for t in cfg.tasks}
    if cfg.ood_task in (None, "", "none"):
        return None, "disabled by the configuration (`ood_task`)"
    if cfg.ood_task != "auto":
        t = tasks.get(cfg.ood_task)
        if t.name in cfg.tasks:
            return None, f"`ood_task` {t.name} is one of the study's tasks"
        why = "" if t.family in fams else f" (its family {t.family} is not in the population)"
        return t, f"configured{why}"
    # A task outside the population that shares a family with it: a new domain of a
    # kind of task the population knows (news topics from another source, say). Its
    # head is built like the population's (zero-shot prompts or a probe on θ₀), so
    # its label set may differ. Families other than topic are tried first.
    outside = [t for t in tasks.TASKS.values() if t.name not in cfg.tasks and t.family in fams]
    if outside:
        t = sorted(outside, key=lambda t: t.family == "topic")[0]
        return t, (f"chosen automatically: the first registered {t.family} task outside "
                   "the population")
    return None, "no registered task outside the population shares a family with it"


def load_features(cfg: Config, enc: model.Encoder, task: tasks.Task, meter: cost.Meter,
                  log: Log, need: tuple[str, ...] = ("train", "val", "test")) -> TaskData:
    """Split ``task`` with the data seed and run the frozen bottom once over
    the splits in ``need`` (the others are left empty)."""
    s = tasks.split(task, cfg.data_seed, cfg.max_train, cfg.max_val, cfg.max_test)
    splits = {"train": s.train, "val": s.val, "test": s.test}
    tokens = sum(sum(enc.lengths(splits[k][0])) for k in need)
    with meter.work("feature", tokens * (cost.LAYERS - cfg.tuned_layers + 1), len(need)):
        f = {k: enc.features(*(v if k in need else ([], []))) for k, v in splits.items()}
    log(f"features {task.name}: {len(f['train'])} train / {len(f['val'])} val / "
        f"{len(f['test'])} test, {task.n_classes} classes")
    return TaskData(task, f["train"], f["val"], f["val"].subset(cfg.val_search), f["test"])


def shared(cfg: Config, meter: cost.Meter, log: Log) -> tuple[Shared, str]:
    """Load the model, every task's features and the seed-free head inputs."""
    with meter.phase("load model"):
        enc = model.Encoder(cfg.tuned_layers, cfg.max_len)
    ood_task, ood_why = resolve_ood(cfg)
    with meter.phase("features"):
        data = [load_features(cfg, enc, tasks.get(n), meter, log) for n in cfg.tasks]
        need = ("train", "test") if cfg.head == "probe" else ("test",)
        ood = load_features(cfg, enc, ood_task, meter, log, need) if ood_task else None
    with meter.phase("heads"):
        every = data + ([ood] if ood else [])
        prompts = {d.task.name: enc.sentence_embeddings(list(d.task.prompts)) for d in every}
        probe_inputs = {}
        if cfg.head == "probe" or cfg.probe_row:
            theta0 = enc.top_state()
            for d in data + ([ood] if ood and cfg.head == "probe" else []):
                with meter.work("eval", d.train.tokens() * cfg.tuned_layers):
                    probe_inputs[d.task.name] = model.embed(enc, theta0, d.train, cfg.eval_batch)
    return Shared(cfg, enc, meter, data, ood, prompts, probe_inputs), ood_why


# --------------------------------------------------------------------- run --


def run(cfg: Config, out: Path, log: Log | None = None,
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
        (default: the full default :class:`config.Config`).

    Returns
    -------
    dict
        Everything written into ``raw.json``.
    """
    out.mkdir(parents=True, exist_ok=True)
    load_start = list(os.getloadavg())
    start, cpu_start = time.perf_counter(), time.process_time()

    def _print(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    log = log or _print
    full = full or Config()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    meter = cost.Meter()
    log(f"all-MiniLM-L6-v2, top {cfg.tuned_layers} layers tuned, {cfg.head} heads; tasks "
        f"{', '.join(cfg.tasks)}; seeds {cfg.seeds}")
    sh, ood_why = shared(cfg, meter, log)
    per_seed, kernels = [], []
    for si, seed in enumerate(cfg.seeds):
        log(f"seed {seed} [{si + 1}/{len(cfg.seeds)}]")
        torch.manual_seed(seed)
        st = Study(sh, seed, log)
        with meter.phase("fine-tune"):
            st.prepare()
        with meter.phase("methods"):
            st.baselines()
            skipped = st.run_methods()
        with meter.phase("out-of-domain"):
            ood = st.out_of_domain()
        with meter.phase("pruning"):
            pruned = pruning.run(st)
        if si == 0 and cfg.kernels:
            with meter.phase("kernels vs NumPy"), meter.work(
                    "kernel", len(st.finetuned) * st.n_params):
                kernels = st.kernel_table()
        per_seed.append(st.result(skipped, pruned, ood))
    raw = {
        "config": cfg.as_dict(), "full_config": full.as_dict(), "seeds": per_seed,
        "kernels": kernels,
        "tasks": task_table(sh), "ood_reason": ood_why,
        "budget_rules": config.budget_rules(cfg, methods.plan(cfg).lam_rows),
        "threads": torch.get_num_threads(), "n_params": sum(
            v.numel() for v in sh.enc.top.state_dict().values()),
    }
    with meter.phase("estimate"):
        raw["estimates"] = estimates(cfg, full, sh.enc, meter)
    raw.update(seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu_start,
               load_average={"start": load_start, "end": list(os.getloadavg())},
               phases=meter.phases, rates=cost.rates(meter))
    import report

    report.write(out, raw)
    (out / "raw.json").write_text(json.dumps(raw, indent=1, default=_json))
    full_min = sum(raw["estimates"]["full"]["wall"].values()) / 60
    log(f"done in {raw['seconds'] / 60:.1f} min wall, {raw['cpu_seconds'] / 60:.1f} min CPU; "
        f"estimated full run at this run's rates: {full_min:.1f} min; results in {out}")
    return raw


def _json(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


def task_table(sh: Shared) -> list[dict[str, Any]]:
    """Per task (and the out-of-domain one): classes, prompts, source, split sizes."""
    rows = []
    for d, role in [*[(d, "merged") for d in sh.data], *([(sh.ood, "out of domain")]
                                                          if sh.ood else [])]:
        rows.append({"name": d.task.name, "role": role, "family": d.task.family,
                     "classes": list(d.task.classes), "prompts": list(d.task.prompts),
                     "source": d.task.source, "metric": d.task.metric, "train": len(d.train),
                     "val": len(d.val), "val_search": len(d.val_search), "test": len(d.test)})
    return rows


def estimates(cfg: Config, full: Config, enc: model.Encoder,
              meter: cost.Meter) -> dict[str, Any]:
    """The cost model's prediction for this run (a check) and for ``full``."""
    r = cost.rates(meter)
    out = {}
    for key, c in (("this run", cfg), ("full", full)):
        ood, _ = resolve_ood(c)
        sizes = cost.task_sizes(c, c.tasks, enc.lengths)
        ood_size = cost.task_sizes(c, [ood.name], enc.lengths)[ood.name] if ood else None
        w = cost.workload(c, sizes, ood_size, methods.plan(c))
        out[key] = {"work": w, "wall": cost.estimate(w, r, "wall"),
                    "cpu": cost.estimate(w, r, "cpu")}
    out["missing"] = sorted({k for w in out["full"]["work"].values() for k, v in w.items()
                             if v and "#" not in k and not k.startswith("merge")
                             and f"wall:{k}" not in r})
    return out
