"""The merging methods compared without a search: which rows run, with what,
and how λ is chosen on validation.

Every method of :func:`npsfuse.methods` that applies gets a row; methods
that need something the run lacks are skipped with a stated reason. A row
whose method scales its merged task vector by λ gets λ from the configured
grid by validation accuracy (:func:`choose_lam`); the data-aware methods
(Fisher, RegMean, AdaMerging) run only when the library provides them
(``npsfuse.stats``, ``npsfuse.adamerging``), with statistics computed here
from the cached features and each task's fixed head.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import names
import npsfuse
import torch
from config import Config

if TYPE_CHECKING:
    from study import Study

StateDict = dict[str, torch.Tensor]

#: Methods whose result has no λ to choose: averaging is the classic baseline
#: (criterion (b)), Model Stock picks its own ratio, SLERP interpolates.
NO_LAM = frozenset({"linear", "model_stock", "slerp"})

#: Methods that need statistics computed from data (npsfuse.stats).
DATA_AWARE = frozenset({"fisher", "regmean"})

#: Methods that use a random seed (DARE's and DELLA's drop).
SEEDED = frozenset({"dare_linear", "dare_ties", "della", "della_linear"})

#: Largest |θ_λ* − (θ₀ + λ*·τ_m)| accepted as "the same model" (float32 rounding).
REBUILD_TOL = 1e-5


@dataclass(frozen=True)
class MergeSpec:
    """One row of plain merging: ``npsfuse.merge(θ₀, fts, method, **params)``
    (``npsfuse.merge(None, fts, …)`` when ``base`` is false: weight averaging
    of the fine-tunes alone, which ``linear`` with θ₀ would average in)."""

    row: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    lam_grid: bool = True
    base: bool = True


@dataclass
class Plan:
    """The plain-merge rows of a run and the methods skipped, with reasons."""

    specs: list[MergeSpec]
    adamerging: bool
    skipped: dict[str, str]

    @property
    def lam_rows(self) -> int:
        """Rows whose λ is chosen on the grid."""
        return sum(s.lam_grid for s in self.specs)


def uses_density(method: str) -> bool:
    """Whether ``method`` takes npsfuse's ``density``."""
    from npsfuse.merging import USES_DENSITY

    return method in USES_DENSITY


def has_lambda(method: str) -> bool:
    """Whether ``method`` declares ``lambda`` (npsfuse's ``lam``) in the engine's
    spec table; the others (karcher, multislerp, sce, ram, …) refuse it."""
    from npsfuse import _spec

    row = _spec.table().methods.get(method)
    return row is not None and "lambda" in row.params


def model_bounds(method: str) -> tuple[int, int]:
    """How many fine-tuned models ``method`` merges: (min, max), max 0 for
    no bound (the engine's spec table)."""
    from npsfuse import _spec

    row = _spec.table().methods.get(method)
    return (row.min_models, row.max_models) if row else (1, 0)


def _wanted(cfg: Config, method: str) -> str | None:
    """Why ``method`` is left out by the configuration (None: it runs)."""
    if cfg.methods is not None and method not in cfg.methods:
        return "not in the configuration's `methods`"
    if method in cfg.skip_methods:
        return "in the configuration's `skip_methods`"
    return None


def plan(cfg: Config, available: Sequence[str] | None = None) -> Plan:
    """The plain-merge rows for ``cfg`` given the library's methods.

    Parameters
    ----------
    cfg
        The configuration (tasks, density, fusion keeps, method filters).
    available
        The library's methods (default :func:`npsfuse.methods`).
    """
    avail = list(npsfuse.methods() if available is None else available)
    n, d = len(cfg.tasks), cfg.density
    has_stats = hasattr(npsfuse, "stats") or _importable("npsfuse.stats")
    specs: list[MergeSpec] = []
    skipped: dict[str, str] = {}

    def add(spec: MergeSpec) -> None:
        why = _wanted(cfg, spec.method)
        if why is None and spec.method in avail:
            specs.append(spec)

    add(MergeSpec(names.AVERAGING, "linear", {}, False, base=False))
    add(MergeSpec(names.TA_NOVAL, "task_arithmetic", {"lam": 0.4}, False))
    add(MergeSpec(names.ties_noval(d), "ties", {"density": d, "lam": 1.0}, False))
    add(MergeSpec(names.NEURO_NOVAL, "neuro", {}, False))
    for m in avail:
        why = _wanted(cfg, m)
        lo, hi = model_bounds(m)
        if not lo <= n <= (hi or n):
            count = f"exactly {lo}" if lo == hi else f"{lo}–{hi}" if hi else f"at least {lo}"
            why = why or f"merges {count} models; this run merges {n}"
        if m in DATA_AWARE and not has_stats:
            why = why or "needs npsfuse.stats, absent from this build"
        if why:
            skipped[m] = why
            continue
        if m == "model_stock":
            specs.append(MergeSpec(names.MODEL_STOCK, m, {}, False))
        elif m == "slerp":
            specs.append(MergeSpec(names.SLERP, m, {"t": 0.5}, False))
        elif m != "linear":
            dens = d if uses_density(m) else None
            # A method without λ (a mean such as karcher or multislerp, or
            # sce/ram, which mergekit defines without one) runs with its
            # defaults: no λ to choose on the validation set.
            lam = has_lambda(m)
            specs.append(MergeSpec(names.lam_row(m, dens) if lam else names.plain_row(m), m,
                                   {"density": dens} if dens is not None else {}, lam))
    if "ties" in avail and _wanted(cfg, "ties") is None:
        for k in cfg.fusion_keeps:
            if k != d:
                specs.append(MergeSpec(names.lam_row("ties", k), "ties", {"density": k}))
    ada = hasattr(npsfuse, "adamerging")
    why = _wanted(cfg, "adamerging")
    if not ada or why:
        skipped["adamerging"] = why or "npsfuse.adamerging is absent from this build"
    return Plan(specs, ada and why is None, skipped)


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


# ---------------------------------------------------------------- λ grid --


def scaled(theta0: StateDict, tau: StateDict, lam: float) -> StateDict:
    """θ₀ + λ·τ (float tensors; others copied from θ₀)."""
    return {k: theta0[k] + lam * tau[k] if k in tau else theta0[k] for k in theta0}


def task_vector(theta0: StateDict, theta: StateDict) -> StateDict:
    """τ = θ − θ₀ for the floating-point tensors."""
    return {k: theta[k] - theta0[k] for k in theta0 if theta0[k].is_floating_point()}


def max_abs_diff(a: StateDict, b: StateDict) -> float:
    """Largest absolute difference over the shared tensors."""
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if k in b)


def choose_lam(theta0: StateDict, build: Callable[[float], StateDict], grid: Sequence[float],
               score: Callable[[StateDict], float]) -> tuple[StateDict, dict[str, Any]]:
    """Pick λ from ``grid`` by validation score and rebuild the model with it.

    The method's merged task vector τ_m = θ_m − θ₀ is built once with λ = 1;
    every grid value is scored as θ₀ + λ·τ_m; the first best λ* is chosen and
    the library rebuilds the model with ``lam=λ*``, which must equal
    θ₀ + λ*·τ_m up to float32 rounding (checked and reported; for λ* = 1
    the first build is the model).

    Returns
    -------
    (θ*, info)
        The rebuilt model and ``lam``, ``grid``, ``scores``, ``rebuild_diff``,
        ``rebuild_ok``.
    """
    first = build(1.0)
    tau = task_vector(theta0, first)
    scores = [score(scaled(theta0, tau, lam)) for lam in grid]
    best = max(range(len(grid)), key=lambda i: (scores[i], -i))
    lam = float(grid[best])
    final = first if lam == 1.0 else build(lam)
    diff = max_abs_diff(final, scaled(theta0, tau, lam))
    return final, {"lam": lam, "grid": list(grid), "scores": scores, "rebuild_diff": diff,
                   "rebuild_ok": bool(diff <= REBUILD_TOL)}


# ------------------------------------------------------------ data-aware --


def statistics(st: Study, kind: str) -> list[dict[str, torch.Tensor]]:
    """Per fine-tune: diagonal Fisher (``kind="fisher"``) or RegMean Gram
    matrices (``"regmean"``) on ``stats_batches`` batches of training inputs,
    through the tuned top and the task's fixed head (cached per seed)."""
    cache = st.cache.setdefault(f"stats:{kind}", [])
    if cache:
        return cache
    from npsfuse import stats

    c = st.cfg
    for i, theta in enumerate(st.finetuned):
        bs = st.input_batches(st.data[i].train, c.stats_batches, c.stats_batch)
        fwd = head_forward(st.heads[i])
        tokens = sum(int(m.sum()) for _, m in bs)
        with st.meter.work(kind, tokens * c.tuned_layers):
            if kind == "fisher":
                cache.append(stats.fisher(st.enc.top, bs, params=theta, forward=fwd,
                                          seed=st.seed))
            else:
                cache.append(stats.regmean_grams(st.enc.top, bs, params=theta, forward=fwd))
    st.check_top_untouched()
    return cache


def head_forward(head: torch.nn.Module) -> Callable[[torch.nn.Module, Any], torch.Tensor]:
    """``forward(top, (hidden, mask)) -> logits`` through the tuned top and a fixed head."""
    def forward(module: torch.nn.Module, batch: Any) -> torch.Tensor:
        return head(module(batch[0], batch[1]))
    return forward


def adamerging_kwargs(cfg: Config) -> dict[str, Any]:
    """Arguments of :func:`npsfuse.adamerging` (``cfg.adamerging`` over the defaults).

    By default one batch per task per step (forward and backward), so that
    its steps cost about what a search's budget of forward evaluations does;
    the study's default (``Config.adamerging``) is 50 steps at lr 1e-2, the
    authors' 500 steps at 1e-3 scaled to the budget.
    """
    return {"steps": 100, "lr": 1e-3, "batches_per_step": len(cfg.tasks), **cfg.adamerging}


def adamerging(st: Study) -> StateDict:
    """AdaMerging (Yang et al., 2024): layer-wise coefficients learnt by entropy
    minimisation on the unlabelled validation inputs of every task.

    Each batch is ``(hidden, mask, task index)``; the forward routes it to
    the task's fixed head.
    """
    bs: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    for i, d in enumerate(st.data):
        bs += [(h, m, i) for h, m in st.input_batches(d.val_search, None, st.cfg.stats_batch)]
    kw = adamerging_kwargs(st.cfg)
    per_batch = sum(int(m.sum()) for _, m, _ in bs) / len(bs)
    steps_tokens = kw["steps"] * min(kw["batches_per_step"] or len(bs), len(bs)) * per_batch

    def forward(module: torch.nn.Module, batch: Any) -> torch.Tensor:
        return st.heads[batch[2]](module(batch[0], batch[1]))

    with st.meter.work("adamerging", steps_tokens * st.cfg.tuned_layers, kw["steps"]):
        out = npsfuse.adamerging(st.theta0, st.finetuned, st.enc.top, bs, forward=forward,
                                 seed=st.seed, progress=False, **kw)
    st.extra.setdefault("adamerging", {}).update(
        {k: out.report[k] for k in ("entropy_final", "steps") if k in out.report})
    st.check_top_untouched()
    return dict(out)


# ------------------------------------------------------------------- rows --


def build_fn(st: Study, spec: MergeSpec) -> Callable[[float], StateDict]:
    """``build(λ)``: the spec's merge of the seed's fine-tunes at scale λ."""
    params = dict(spec.params)
    if spec.method in SEEDED:
        params["seed"] = st.seed
    if spec.method in DATA_AWARE:
        params["statistics"] = statistics(st, spec.method)

    takes_lam = has_lambda(spec.method)

    def build(lam: float) -> StateDict:
        call = {**params, "lam": lam} if takes_lam else params
        with st.meter.work(f"merge:{spec.method}", len(st.finetuned) * st.n_params):
            return npsfuse.merge(st.theta0 if spec.base else None, st.finetuned, spec.method,
                                 **call)

    if not spec.lam_grid:
        fixed_lam = params.pop("lam", 1.0)
        return lambda _lam: build(fixed_lam)
    return build


def run_spec(st: Study, spec: MergeSpec) -> StateDict:
    """The model of one plain-merge row (λ chosen on the grid when the row has one)."""
    build = build_fn(st, spec)
    if not spec.lam_grid:
        return build(math.nan)
    theta, info = choose_lam(st.theta0, build, st.cfg.lam_grid, st.ev.val_score)
    st.meter.add("merge", len(info["grid"]) * st.n_params)
    st.lam_info[spec.row] = info
    return theta
