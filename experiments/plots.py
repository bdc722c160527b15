"""The report's figures (PNG, matplotlib's Agg backend), from a run's raw results.

* ``accuracy.png``: average test accuracy per row, mean ± std over seeds;
* ``claims.png``: every criterion's and claim's margin, per seed and mean;
* ``pruning.png``: accuracy retained against bits per parameter (all tasks)
  and test accuracy against keep ratio per task;
* ``searches.png``: best validation score against evaluations used, per
  search (mean over seeds), including CADE against fixed F, CR, and F / CR;
* ``lambda.png``: validation accuracy over the λ grid of every λ row (seed 1);
* ``ood.png``: the out-of-domain task's accuracy per model.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import claims as cl
import names
import pruning


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_all(out: Path, raw: dict[str, Any], cr: list[cl.Criterion],
              cs: list[cl.Claim]) -> list[str]:
    """Write every figure into ``out``; returns the file names written."""
    plt = _plt()
    done = []
    for name, fn in (("accuracy.png", accuracy), ("claims.png", margins),
                     ("pruning.png", pruning_curves), ("searches.png", search_curves),
                     ("lambda.png", lam_curves), ("ood.png", ood_bars)):
        fig = fn(plt, raw, cr, cs)
        if fig is not None:
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            done.append(name)
    return done


def accuracy(plt: Any, raw: dict[str, Any], *_: Any) -> Any:
    """Average test accuracy per row (baselines grey)."""
    rows = [n for n in names.BASELINES if any(n in p["rows"] for p in raw["seeds"])]
    rows += cl.merge_rows(raw)
    stats = {n: cl.mean_std(cl.averages(raw, n)) for n in rows}
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.5))
    ax.barh(rows, [stats[n][0] for n in rows], xerr=[stats[n][1] for n in rows],
            color=["tab:gray" if n in names.BASELINES else "tab:blue" for n in rows])
    lo = min(m for m, _ in stats.values())
    ax.set_xlim(max(0.0, lo - 5), 100)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("average test accuracy (%), mean ± std over seeds")
    return fig


def margins(plt: Any, raw: dict[str, Any], cr: list[cl.Criterion], cs: list[cl.Claim]) -> Any:
    """Each criterion's and claim's per-seed margins (dots) and mean (bar)."""
    items = [(f"({c.key}) {c.text}"[:70], c.per_seed) for c in cr] + \
        [(c.claim[:70], c.margins) for c in cs]
    items = [(t, xs) for t, xs in items if xs]
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(items) + 1.5))
    for y, (_, xs) in enumerate(items):
        ax.barh(y, statistics.fmean(xs), color="tab:blue", alpha=0.4)
        ax.plot(xs, [y] * len(xs), "k.", ms=4)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(items)), [t for t, _ in items], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("margin, points (claimed-better − claimed-worse; criteria: measured value)")
    return fig


def pruning_curves(plt: Any, raw: dict[str, Any], *_: Any) -> Any:
    """Accuracy retained vs bits per parameter (tasks averaged), and per-task curves."""
    tasks = raw["config"]["tasks"]
    per_seed = [pruning.retained(p["pruning"], dict(zip(tasks, p["rows"][names.INDIVIDUAL],
                                                        strict=True))) for p in raw["seeds"]]
    cols = min(3, len(tasks)) + 1
    fig, axes = plt.subplots(1, cols, figsize=(4 * cols, 3.4), squeeze=False)
    ax = axes[0][0]
    for meth in pruning.METHODS:
        keys = sorted({k for r in per_seed for k in r[meth]}, key=float)
        pts = []
        for k in keys:
            rs = [r[meth][k] for r in per_seed if k in r[meth]]
            pts.append((statistics.fmean(x["bits"] for x in rs),
                        *cl.mean_std([100 * x["retained"] for x in rs])))
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                        marker="o", capsize=2, label=meth)
    ax.axhline(100 * cl.COMPRESSION_RETAINED, color="k", ls=":", lw=0.8)
    ax.set_xlabel("bits per parameter (per task)")
    ax.set_ylabel("accuracy retained (%)")
    ax.set_title("all tasks")
    ax.legend(fontsize=7)
    for ax, task in zip(axes[0][1:], tasks, strict=False):
        for meth in pruning.METHODS:
            keys = raw["config"]["keeps"]
            ys = [cl.mean_std([100 * p["pruning"][task][meth][str(k)]["acc"] for p in raw["seeds"]
                               if str(k) in p["pruning"][task].get(meth, {})]) for k in keys]
            ax.errorbar(keys, [m for m, _ in ys], yerr=[s for _, s in ys], marker=".",
                        capsize=2, label=meth)
        ax.set_xscale("log")
        ax.set_xticks(keys, [f"{k:g}" for k in keys])
        ax.minorticks_off()
        ax.set_title(task)
        ax.set_xlabel("keep ratio")
    return fig


def search_curves(plt: Any, raw: dict[str, Any], *_: Any) -> Any:
    """Best validation score vs evaluations (mean over seeds) and F / CR per generation."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    keys = sorted({k for p in raw["seeds"] for k in p["histories"]})
    for name in keys:
        hs = [p["histories"][name] for p in raw["seeds"] if p["histories"].get(name)]
        if not hs:
            continue
        top = min(h[-1].get("evaluations", len(h)) for h in hs)
        xs = sorted({g.get("evaluations", i) for h in hs for i, g in enumerate(h)
                     if g.get("evaluations", i) <= top})
        ys = [statistics.fmean(cl.best_so_far(h, x) for h in hs) for x in xs]
        style = "--" if name == names.DE_FIXED else "-"
        axes[0].plot(xs, ys, style, marker=".", label=name)
        fs = [(g["generation"], g["F"], g.get("CR")) for g in hs[0] if g.get("F") is not None]
        if fs:
            axes[1].plot([x[0] for x in fs], [x[1] for x in fs], style, marker=".",
                         label=f"{name}: F")
            axes[1].plot([x[0] for x in fs], [x[2] for x in fs], ":", label=f"{name}: CR")
    axes[0].set_xlabel("validation evaluations used")
    axes[0].set_ylabel("best validation accuracy so far (%)")
    axes[0].set_title(f"searches (mean over {len(raw['seeds'])} seed(s))")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("generation")
    axes[1].set_title("F and CR")
    if axes[1].lines:
        axes[1].legend(fontsize=6)
    return fig


def lam_curves(plt: Any, raw: dict[str, Any], *_: Any) -> Any:
    """Validation accuracy over the λ grid of every λ row (first seed)."""
    lam = raw["seeds"][0].get("lam", {}) if raw["seeds"] else {}
    if not lam:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, info in lam.items():
        ax.plot(info["grid"], [100 * s for s in info["scores"]], marker=".", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("λ")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"λ grid (seed {raw['seeds'][0]['seed']})")
    ax.legend(fontsize=6, ncol=2)
    return fig


def ood_bars(plt: Any, raw: dict[str, Any], *_: Any) -> Any:
    """The out-of-domain task's test accuracy per model, mean ± std over seeds."""
    seeds = [p["ood"] for p in raw["seeds"] if p.get("ood")]
    if not seeds:
        return None
    rows = list(seeds[0]["rows"])
    stats = [cl.mean_std([100 * s["rows"][r] for s in seeds if r in s["rows"]]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.5))
    ax.barh(rows, [m for m, _ in stats], xerr=[0 if math.isnan(s) else s for _, s in stats],
            color="tab:green")
    ax.invert_yaxis()
    ax.set_xlabel(f"test accuracy on {seeds[0]['task']} (%)")
    return fig
