"""The headroom criteria and the papers' claims, computed from a run's raw results.

Every verdict in the report comes from here, from the per-seed numbers
(margins, their spread over seeds, the test sets' sampling error); nothing
in them is written by hand. All functions are pure functions of ``raw``
(what ``study.run`` writes to ``raw.json``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import names
import pruning

#: Issue 12's thresholds, in points of average test accuracy.
HEADROOM_MIN = 8.0
INTERFERENCE_MIN = 5.0
#: Criterion (d): the best merge recovers at least this share of the headroom.
RECOVERY_MIN = 0.5
#: The compression claim: "near-original performance" (normalised accuracy).
COMPRESSION_RETAINED = 0.99


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def averages(raw: dict[str, Any], name: str) -> list[float]:
    """Per seed: the average over tasks of row ``name``'s test accuracy (points)."""
    return [100 * statistics.fmean(p["rows"][name]) for p in raw["seeds"] if name in p["rows"]]


def paired(raw: dict[str, Any], a: str, b: str) -> list[float]:
    """Per seed where both rows exist: average(a) − average(b), in points."""
    return [100 * (statistics.fmean(p["rows"][a]) - statistics.fmean(p["rows"][b]))
            for p in raw["seeds"] if a in p["rows"] and b in p["rows"]]


def sampling_error(raw: dict[str, Any], acc: float) -> float:
    """Standard error (points) of an average-over-tasks test accuracy near
    ``acc`` (binomial, the tasks' test-set sizes)."""
    sizes = [t["test"] for t in raw["tasks"] if t["role"] == "merged"]
    return 100 * math.sqrt(sum(acc * (1 - acc) / max(s, 1) for s in sizes)) / max(len(sizes), 1)


def merge_rows(raw: dict[str, Any]) -> list[str]:
    """Every row that is a merge (not a baseline), in table order."""
    seen: list[str] = []
    for p in raw["seeds"]:
        seen += [n for n in p["rows"] if n not in seen and n not in names.BASELINES]
    return seen


# --------------------------------------------------------------- criteria --


@dataclass
class Criterion:
    """One headroom criterion: what it asks, what was measured, the verdict."""

    key: str
    text: str
    measured: str
    per_seed: list[float]
    verdict: str


def _threshold(key: str, text: str, xs: list[float], minimum: float) -> Criterion:
    m, s = mean_std(xs)
    if not xs:
        return Criterion(key, text, "—", xs, "not measured")
    ok = m >= minimum
    every = all(x >= minimum for x in xs)
    v = ("met" if ok else "not met") + ("" if ok == every or len(xs) < 2 else
                                         " on average, not on every seed")
    return Criterion(key, text, f"{m:+.1f} ± {s:.1f}", xs, v)


def criteria(raw: dict[str, Any]) -> list[Criterion]:
    """Issue 12's criteria (a)–(d) with their measured values and verdicts."""
    d = raw["config"]["density"]
    out = [
        _threshold("a", f"individual − pre-trained (same heads) ≥ {HEADROOM_MIN:g} points",
                   paired(raw, names.INDIVIDUAL, names.PRETRAINED), HEADROOM_MIN),
        _threshold("b", f"individual − weight averaging ≥ {INTERFERENCE_MIN:g} points",
                   paired(raw, names.INDIVIDUAL, names.AVERAGING), INTERFERENCE_MIN),
    ]
    trio = [names.AVERAGING, names.lam_row("task_arithmetic", None), names.lam_row("ties", d)]
    for i, a in enumerate(trio):
        for b in trio[i + 1:]:
            out.append(_separated(raw, a, b))
    out.append(_recovery(raw))
    return out


def _separated(raw: dict[str, Any], a: str, b: str) -> Criterion:
    """(c): |mean(a) − mean(b)| > 2 × the larger of their seed spreads."""
    xa, xb = averages(raw, a), averages(raw, b)
    text = f"{a} vs {b}: |difference| > 2 × seed spread"
    if len(xa) < 2 or len(xb) < 2:
        return Criterion("c", text, "—", paired(raw, a, b),
                         "not measurable (needs ≥ 2 seeds of both)")
    (ma, sa), (mb, sb) = mean_std(xa), mean_std(xb)
    spread = max(sa, sb)
    diffs = paired(raw, a, b)
    _, sd = mean_std(diffs)
    ok = abs(ma - mb) > 2 * spread
    return Criterion("c", text, f"{ma - mb:+.1f} (spreads {sa:.1f}, {sb:.1f}; paired ± {sd:.1f})",
                     diffs, "met" if ok else "not met")


def _recovery(raw: dict[str, Any]) -> Criterion:
    """(d): the best merge recovers ≥ RECOVERY_MIN of the headroom, clear of its spread."""
    text = (f"best merge − pre-trained ≥ {RECOVERY_MIN:.0%} of (individual − pre-trained), "
            "and > 2 × its seed spread")
    rows = {n: mean_std(averages(raw, n))[0] for n in merge_rows(raw)}
    rows = {n: v for n, v in rows.items() if not math.isnan(v)}
    if not rows:
        return Criterion("d", text, "—", [], "not measured")
    best = max(rows, key=rows.__getitem__)
    gain = paired(raw, best, names.PRETRAINED)
    head = paired(raw, names.INDIVIDUAL, names.PRETRAINED)
    (mg, sg), (mh, _) = mean_std(gain), mean_std(head)
    share = mg / mh if mh > 0 else math.nan
    ok = mh > 0 and share >= RECOVERY_MIN and mg > 2 * sg
    return Criterion("d", f"{text} (best: {best})",
                     f"{mg:+.1f} ± {sg:.1f} = {share:.0%} of the headroom", gain,
                     "met" if ok else "not met")


# ----------------------------------------------------------------- claims --


@dataclass
class Claim:
    """A paper's claim and the margins measured for it (points, per seed)."""

    claim: str
    compared: str
    margins: list[float]
    strict: bool = True
    verdict: str = ""
    notes: list[str] = field(default_factory=list)


def verdict(margins: list[float], strict: bool, se: float) -> str:
    """How a claimed ordering fares, from its per-seed margins (points).

    ``reproduces`` (the claimed sign on every seed), ``does not reproduce``
    (on none; ``reversed`` if every margin is negative) or ``inconclusive``,
    with notes when the mean is within its spread or the sampling error ``se``.
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


def _pair(raw: dict[str, Any], claim: str, a: str, b: str, strict: bool = True) -> Claim | None:
    ms = paired(raw, a, b)
    return Claim(claim, f"{a} vs {b}", ms, strict) if ms else None


def claims(raw: dict[str, Any]) -> list[Claim]:
    """The papers' claims next to what this run measured (rows that ran only)."""
    d = raw["config"]["density"]
    ties, ta = names.lam_row("ties", d), names.lam_row("task_arithmetic", None)
    pairs = [
        ("NeuroMerging > TIES (no validation)", names.NEURO_NOVAL, names.ties_noval(d)),
        ("NeuroMerging > TIES (with validation)", names.NEURO_GRID, ties),
        ("TIES > Task Arithmetic (no validation)", names.ties_noval(d), names.TA_NOVAL),
        ("TIES > Task Arithmetic (λ on validation)", ties, ta),
        *[("NPS fusion > TIES at the same keep ratio", names.nps_fusion(k),
           names.lam_row("ties", k)) for k in raw["config"]["fusion_keeps"]],
        ("TSV-Merge > TIES", names.lam_row("tsv", None), ties),
        ("Iso-C > Task Arithmetic", names.lam_row("iso_c", None), ta),
        ("Iso-CTS ≥ Iso-C", names.lam_row("iso_cts", None), names.lam_row("iso_c", None)),
        ("Fisher merging > weight averaging", names.lam_row("fisher", None), names.AVERAGING),
        ("RegMean > Fisher merging", names.lam_row("regmean", None),
         names.lam_row("fisher", None)),
        ("AdaMerging > Task Arithmetic", names.ADAMERGING, ta),
        ("Evolver ≥ its best parent", names.EVOLVER, names.BEST_PARENT),
        ("(context) Evolver ≥ its merger alone", names.EVOLVER, ties),
        ("CADE's search ≥ DE with fixed F, CR (test)", names.DE_CADE, names.DE_FIXED),
    ]
    out = [c for claim, a, b in pairs
           if (c := _pair(raw, claim, a, b, not claim.startswith(("Iso-CTS ≥", "Evolver ≥",
                                                                   "(context)", "CADE")))) ]
    out += pruning_claims(raw) + cade_claims(raw) + compression_claims(raw) + ood_claims(raw)
    se = sampling_error(raw, mean_std(averages(raw, ties))[0] / 100
                        if averages(raw, ties) else 0.9)
    for c in out:
        c.verdict = verdict(c.margins, c.strict, se)
    return out


def _pruning_margins(raw: dict[str, Any], a: str, b: str, keep: str) -> list[float]:
    """Per seed: tasks' mean test accuracy of pruning method a − b at ``keep`` (points)."""
    out = []
    for p in raw["seeds"]:
        ds = [p["pruning"][t][a][keep]["acc"] - p["pruning"][t][b][keep]["acc"]
              for t in p["pruning"] if keep in p["pruning"][t].get(a, {})
              and keep in p["pruning"][t].get(b, {})]
        if ds:
            out.append(100 * statistics.fmean(ds))
    return out


def pruning_claims(raw: dict[str, Any]) -> list[Claim]:
    """NPS against magnitude top-k (TIES's trim) and against low-rank truncation."""
    out = []
    for k in raw["config"]["keeps"]:
        key = str(k)
        out.append(Claim(f"NPS > magnitude trim at keep {k} (pruning)",
                         "NPS-Pruning vs magnitude top-k",
                         _pruning_margins(raw, "NPS", "magnitude top-k", key)))
        out.append(Claim(f"(context) NPS > low-rank truncation, same bits, keep {k}",
                         "NPS-Pruning vs low-rank (TSV-style)",
                         _pruning_margins(raw, "NPS", "low-rank (TSV-style)", key)))
    return out


def best_so_far(hist: list[dict[str, Any]], evals: float) -> float:
    """Best validation score (points) a search had reached within ``evals`` evaluations."""
    xs = [h["best"] for h in hist if h.get("evaluations", 0) <= evals and
          math.isfinite(h["best"])]
    return 100 * max(xs) if xs else math.nan


def cade_claims(raw: dict[str, Any]) -> list[Claim]:
    """CADE's claim: its cosine F/CR schedule converges faster than fixed F, CR
    (best validation score so far at half and at all of the evaluations)."""
    out = []
    for frac in (0.5, 1.0):
        ms = []
        for p in raw["seeds"]:
            a, b = p["histories"].get(names.DE_CADE), p["histories"].get(names.DE_FIXED)
            if a and b:
                n = frac * min(a[-1]["evaluations"], b[-1]["evaluations"])
                ms.append(best_so_far(a, n) - best_so_far(b, n))
        out.append(Claim(f"CADE converges faster than fixed F, CR ({frac:.0%} of the "
                         "evaluations)", "best validation so far, DE/CADE vs DE fixed", ms))
    return out


def compression_claims(raw: dict[str, Any]) -> list[Claim]:
    """NPS's compression claim: near-original accuracy (≥ 99 % retained) at a
    fraction of the storage; margin = retained − 99 %, per keep ratio."""
    out = []
    for k in raw["config"]["keeps"]:
        ms, bits = [], []
        for p in raw["seeds"]:
            ind = dict(zip(raw["config"]["tasks"], p["rows"][names.INDIVIDUAL], strict=True))
            r = pruning.retained(p["pruning"], ind)["NPS"].get(str(k))
            if r:
                ms.append(100 * (r["retained"] - COMPRESSION_RETAINED))
                bits.append(r["bits"])
        if ms:
            out.append(Claim(f"NPS keeps ≥ {COMPRESSION_RETAINED:.0%} of the accuracy at "
                             f"{statistics.fmean(bits):.2f} bits/parameter (keep {k})",
                             "NPS retained − 99 %", ms, strict=False))
    return out


def ood_claims(raw: dict[str, Any]) -> list[Claim]:
    """Evolver's out-of-domain claim, when the run had an out-of-domain task."""
    seeds = [p for p in raw["seeds"] if p.get("ood")]
    if not seeds:
        return []
    task = seeds[0]["ood"]["task"]
    ties = names.lam_row("ties", raw["config"]["density"])
    out = []
    for other, label in ((ties, "its merger (TIES)"), ("best fine-tune", "every parent")):
        ms = []
        for p in seeds:
            rows = p["ood"]["rows"]
            if names.EVOLVER not in rows:
                continue
            if other == "best fine-tune":
                ref = max(v for k, v in rows.items() if k.startswith("fine-tune on"))
            elif other in rows:
                ref = rows[other]
            else:
                continue
            ms.append(100 * (rows[names.EVOLVER] - ref))
        out.append(Claim(f"Evolver ≥ {label} out of domain ({task})",
                         f"{names.EVOLVER} vs {label} on {task}", ms, strict=False))
    return out
