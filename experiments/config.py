"""The study's configuration, its presets and its budget rules.

Everything that defines a run is one :class:`Config` (written into the
report). ``docs/experiments.md`` explains every knob. A run's configuration
is a preset (the default = the full ``make experiment``, :data:`DEMO`,
:data:`MINI`) overridden by a JSON / YAML file and command-line options
(see ``run.py``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADS = ("zeroshot", "probe")
#: The searching methods, by configuration name (``Config.searches``), in run order.
SEARCHES = ("neuro_grid", "nps_fusion", "evolver", "de_cade", "de_fixed", "cma")


@dataclass
class Config:
    """Everything that defines a run (every field is documented in docs/experiments.md).

    The defaults are the full ``make experiment``, sized for ≤ 45 minutes on
    2 CPU cores from the cost model (see ``cost.py`` and the report's runtime
    section).
    """

    # -- tasks and data
    # Eight tasks of four families (spam, sentiment ×4, topic ×2, author): the set that gave
    # the most interference in the exploration written up in results.md (averaging −9 points).
    tasks: list[str] = field(default_factory=lambda: [
        "sms_spam", "tweets", "movies", "amazon", "nyt", "bbc", "r8", "election"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    data_seed: int = 0
    max_train: int = 800
    max_val: int = 300
    max_test: int = 300
    val_search: int | None = None  # validation examples per task seen by λ grids and searches
    max_len: int = 32  # tokens per text: the 300-example validation sets within 45 minutes
    # -- model, heads, fine-tuning
    tuned_layers: int = 1
    head: str = "zeroshot"
    train_head: bool = False
    zs_scale: float = 50.0
    probe_passes: int = 40
    epochs: int = 2
    lr: float = 3e-4
    lr_schedule: str = "constant"
    weight_decay: float = 0.01
    batch: int = 32
    eval_batch: int = 128
    # -- merging methods
    methods: list[str] | None = None
    searches: list[str] | None = None  # None: every search of SEARCHES
    skip_methods: list[str] = field(default_factory=lambda: [
        "breadcrumbs_ties", "della_linear", "consensus_ta", "magnitude_prune"])
    density: float = 0.2
    # λ grid, about geometric: down to 0.1 for the sums (task arithmetic's λ* is 0.5 with 8
    # tasks), up to 7 for the methods that flatten or average (Iso-C's λ* was at the top of
    # grids ending at 2, 3 and 4.5: its validation accuracy still rose from 3 to 4.5).
    lam_grid: list[float] = field(default_factory=lambda: [
        0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 4.0, 7.0])
    search_lam: list[float] = field(default_factory=lambda: [0.1, 3.0])  # λ box of TIES searches
    budget: int = 12
    popsize: int = 4
    search_density: list[float] = field(default_factory=lambda: [0.05, 0.5])
    de_fixed_f: float = 0.5
    de_fixed_cr: float = 0.5
    stats_batches: int = 4
    stats_batch: int = 16
    adamerging: dict[str, Any] = field(default_factory=lambda: {"steps": 50, "lr": 0.01})
    # -- pruning and fusion
    keeps: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1, 0.3])
    prune_evals: int = 5
    fusion_keeps: list[float] = field(default_factory=lambda: [0.1])
    value_bits: int = 16
    topk_scope: str = "global"
    # -- extras
    ood_task: str | None = "auto"
    probe_row: bool = True
    kernels: bool = True
    threads: int | None = None  # torch threads (None: torch's default)

    def __post_init__(self) -> None:
        problems = []
        if self.head not in HEADS:
            problems.append(f"head must be one of {HEADS}, got {self.head!r}")
        if not 1 <= self.tuned_layers <= 6:
            problems.append(f"tuned_layers must be in 1…6, got {self.tuned_layers}")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            problems.append(f"tasks must be distinct and non-empty, got {self.tasks}")
        if not self.seeds:
            problems.append("seeds must be non-empty")
        if not self.lam_grid or any(not x > 0 for x in self.lam_grid):
            problems.append(f"lam_grid must be positive numbers, got {self.lam_grid}")
        if len(self.search_lam) != 2 or not 0 < self.search_lam[0] < self.search_lam[1]:
            problems.append(f"search_lam must be [lo, hi] with 0 < lo < hi, got {self.search_lam}")
        for name in ("keeps", "fusion_keeps"):
            if any(not 0 < k <= 1 for k in getattr(self, name)):
                problems.append(f"{name} must lie in (0, 1], got {getattr(self, name)}")
        if not 0 < self.density <= 1:
            problems.append(f"density must lie in (0, 1], got {self.density}")
        if self.topk_scope not in ("global", "tensor"):
            problems.append(f"topk_scope must be 'global' or 'tensor', got {self.topk_scope!r}")
        if self.value_bits not in (16, 32):
            problems.append(f"value_bits must be 16 or 32, got {self.value_bits}")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be ≥ 1 or null, got {self.threads}")
        if self.val_search is not None and self.val_search < 1:
            problems.append(f"val_search must be ≥ 1 or null, got {self.val_search}")
        if len(self.search_density) != 2 or not 0 < self.search_density[0] <= \
                self.search_density[1] <= 1:
            problems.append(f"search_density must be [lo, hi] in (0, 1], got "
                            f"{self.search_density}")
        for name in ("budget", "popsize", "prune_evals", "epochs", "batch", "max_train",
                     "max_val", "max_test", "stats_batches", "stats_batch"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be ≥ 1, got {getattr(self, name)}")
        unknown = sorted(set(self.searches or []) - set(SEARCHES))
        if unknown:
            problems.append(f"unknown search(es) {unknown}; known: {', '.join(SEARCHES)}")
        fusion = self.searches is None or "nps_fusion" in self.searches
        if fusion and self.fusion_keeps and self.budget < nps_evals(self) + 1:
            problems.append(f"budget {self.budget} cannot hold NPS fusion: its per-task "
                            f"searches take {nps_evals(self)} evaluations (prune_evals) and its "
                            "λ search at least 1")
        if problems:
            raise ValueError("bad configuration: " + "; ".join(problems))

    def with_overrides(self, values: dict[str, Any]) -> Config:
        """A copy with ``values`` replaced (unknown keys are an error naming them)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown configuration key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **values)

    def as_dict(self) -> dict[str, Any]:
        """The configuration as plain data (for raw.json and the report)."""
        return dataclasses.asdict(self)


def load_file(path: str | Path) -> dict[str, Any]:
    """Configuration values from a ``.json`` or ``.yaml`` / ``.yml`` file (a mapping)."""
    p = Path(path)
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    elif p.suffix == ".json":
        data = json.loads(text)
    else:
        raise ValueError(f"{p}: the configuration file must be .json, .yaml or .yml")
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of configuration keys, got "
                         f"{type(data).__name__}")
    return data


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as JSON when it
    parses (numbers, lists, true/false/null), else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set takes key=value, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


# ----------------------------------------------------------- budget rules --
#
# Every searching method gets at most ``budget`` evaluations of a merged model
# on all tasks' validation subsets (an evaluation on one task counts 1/T).
# The functions below turn the budget into each optimiser's generations.


def evolver_generations(cfg: Config) -> int:
    """Evolver with a merger: the merged start is evaluated once, then one
    trial per individual (= task) per generation."""
    return max(1, (cfg.budget - 1) // len(cfg.tasks))


def de_generations(cfg: Config) -> int:
    """DE evaluates its initial population, then ``popsize`` per generation."""
    return max(1, cfg.budget // cfg.popsize - 1)


def cma_generations(cfg: Config) -> int:
    """CMA-ES evaluates its start point, then ``popsize`` per generation."""
    return max(1, (cfg.budget - 1) // cfg.popsize)


NEURO_GRID = [(l1, l2) for l2 in (0.5, 1.0, 1.5, 2.0, 3.0) for l1 in (0.0, 0.5, 1.0)]


def neuro_grid(cfg: Config) -> list[tuple[float, float]]:
    """The (λ₁, λ₂) points NeuroMerging-with-validation tries (≤ budget, spread evenly)."""
    if cfg.budget >= len(NEURO_GRID):
        return list(NEURO_GRID)
    idx = [round(i * (len(NEURO_GRID) - 1) / max(1, cfg.budget - 1)) for i in range(cfg.budget)]
    return [NEURO_GRID[i] for i in sorted(set(idx))]


def nps_generations(cfg: Config) -> tuple[int, int]:
    """NPS-Pruning's CMA-ES: population 4; the start, then 4 per generation,
    at most ``prune_evals`` single-task evaluations in all."""
    return 4, max(1, (cfg.prune_evals - 1) // 4)


def nps_evals(cfg: Config) -> int:
    """Single-task validation evaluations of one NPS-Pruning search."""
    pop, gens = nps_generations(cfg)
    return 1 + pop * gens


def fusion_popsize_generations(cfg: Config) -> tuple[int, int]:
    """NPS fusion: the per-task NPS-Pruning searches cost ``nps_evals``
    single-task evaluations per task (= ``nps_evals`` all-task evaluations);
    the fusion's λ search (CMA-ES, 1 start + 4 per generation) gets the rest
    (0 generations: the start point λ = 1 alone)."""
    return 4, max(0, (cfg.budget - nps_evals(cfg) - 1) // 4)


def budget_rules(cfg: Config, n_lam_rows: int) -> list[str]:
    """The budget rules as sentences for the report (computed from ``cfg``)."""
    n = len(cfg.tasks)
    fp, fg = fusion_popsize_generations(cfg)
    pp, pg = nps_generations(cfg)
    vs = "the whole validation set" if cfg.val_search is None else \
        f"the first {cfg.val_search} validation examples"
    return [
        f"Validation evaluations use {vs} of each task (an evaluation on one task counts "
        f"1/{n}); the column *val. evals* of the table shows what each method used.",
        f"λ for every method that has one ({n_lam_rows} rows marked *λ on val.*) is chosen "
        f"from the grid {cfg.lam_grid} by validation accuracy ({len(cfg.lam_grid)} evaluations "
        "each): the method's merged task vector τ_m = θ_m − θ₀ (built once with λ = 1) is "
        "scaled, θ₀ + λ·τ_m, and the final model is rebuilt by the library with λ*; the "
        "report checks that the two agree.",
        f"Sparsifying methods keep density {cfg.density} unless their row says otherwise; "
        "rows marked *no val.* use their papers' defaults and no validation data.",
        f"Every searching method gets at most **{cfg.budget}** validation evaluations; "
        f"searches over TIES' λ use the box [{cfg.search_lam[0]}, {cfg.search_lam[1]}] (TIES' "
        "λ* on the grid lies inside it).",
        f"NeuroMerging (λ₁, λ₂ grid): {len(neuro_grid(cfg))} points.",
        f"Evolver with merger (TIES, density {cfg.density}, λ = TIES's λ* from its grid): "
        f"population = the {n} fine-tunes, {evolver_generations(cfg)} generations.",
        f"TIES λ and density by DE with CADE's cosine F/CR schedule (0.9 → 0.1), by DE with "
        f"fixed F = {cfg.de_fixed_f}, CR = {cfg.de_fixed_cr} (CADE's claim), both population "
        f"{cfg.popsize}, {de_generations(cfg)} generations after the initial one; by CMA-ES: "
        f"population {cfg.popsize}, {cma_generations(cfg)} generations after the start point.",
        f"NPS-Pruning (pruning study and fusion): CMA-ES over 8 subspace weights, population "
        f"{pp}, {pg} generations per task and keep ratio ({nps_evals(cfg)} single-task "
        f"evaluations); NPS fusion reuses those searches and spends the rest of the budget on "
        f"its λ search (population {fp}, {fg} generations).",
        f"Fisher and RegMean statistics: {cfg.stats_batches} batches of {cfg.stats_batch} "
        "training inputs per task; AdaMerging: the unlabelled validation inputs (no labels, "
        "so no validation evaluations are counted for it).",
        "Magnitude top-k, DARE and low-rank truncation in the pruning study use no validation "
        "data (DARE's seed = the run's seed).",
    ]


# ---------------------------------------------------------------- presets --

#: The short study ``make demo`` runs (≤ 5 minutes on 2 cores).
DEMO = Config(tasks=["sms_spam", "tweets"], seeds=[0], max_train=300, max_val=300,
              max_test=300, val_search=100, lam_grid=[0.1, 0.3, 1.0], budget=10, popsize=4,
              keeps=[0.02, 0.1, 0.3], prune_evals=5, fusion_keeps=[0.1],
              adamerging={"steps": 30, "lr": 0.01}, kernels=False)

#: The miniature the test suite runs end to end (tests/test_experiment.py).
MINI = Config(tasks=["sms_spam", "tweets"], seeds=[0], tuned_layers=1, max_train=64,
              max_val=24, max_test=48, epochs=2, lr=3e-4, lam_grid=[0.3, 1.0], budget=8,
              popsize=4, keeps=[0.1], prune_evals=5, fusion_keeps=[0.1], stats_batches=1,
              stats_batch=8, probe_passes=10, adamerging={"steps": 2}, kernels=False,
              skip_methods=[])

PRESETS = {"full": Config(), "demo": DEMO, "mini": MINI}
