"""A 1-seed, 2-task miniature of `make experiment`, end to end.

Fine-tunes MiniLM's top layers on two packaged text tasks, runs every merging
method, the pruning study and the report writer, then checks the report.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    sys.path.insert(0, str(EXPERIMENTS))
    import run

    out = tmp_path_factory.mktemp("experiment")
    raw = run.run(run.MINI, out, log=lambda msg: None, full=run.Config())
    return out, raw


def _table_rows(md: str, heading: str) -> dict[str, list[str]]:
    section = md.split(f"## {heading}")[1].split("\n## ")[0]
    rows = {}
    header_seen = False
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) <= 2 or set(cells[1]) <= set("-"):
            continue
        if header_seen:
            rows[cells[0]] = cells[1:]
        header_seen = True
    return rows


def _mean(cell: str) -> float:
    return float(re.sub(r"\*", "", cell).split("±")[0])


def test_files_written(mini: tuple[Path, dict]) -> None:
    out, _ = mini
    for name in ("results.md", "raw.json", "accuracy.png", "pruning.png", "searches.png"):
        assert (out / name).stat().st_size > 0, name
    json.loads((out / "raw.json").read_text())


def test_every_method_row_present_with_valid_accuracies(mini: tuple[Path, dict]) -> None:
    import run

    out, raw = mini
    md = (out / "results.md").read_text()
    rows = _table_rows(md, "Multi-task merging")
    expected = ["pre-trained (linear probe)", "pre-trained (fine-tuned heads)",
                "individual fine-tunes", "best single fine-tune (by val.)",
                *run.Study.method_names(run.MINI)]
    assert not raw["seeds"][0]["failed"], raw["seeds"][0]["failed"]
    for name in expected:
        assert name in rows, f"{name} missing from the table"
        accs = [_mean(c) for c in rows[name][: len(run.MINI.tasks) + 1]]
        assert all(0.0 <= a <= 100.0 for a in accs), (name, accs)
    for name in ("NeuroMerging (no val.)", "TIES (k=0.2)", "task arithmetic (λ=0.3)",
                 *(f"NPS fusion (keep {k})" for k in run.MINI.fusion_keeps),
                 "Evolver with merger (TIES)",
                 "TIES λ,k by DE/CADE", "TIES λ,k by CMA-ES", "NeuroMerging (λ searched)",
                 "DARE-TIES (p=0.3)", "PCB (k=0.2)", "Consensus-TIES (k=0.2)",
                 "weight averaging"):
        assert name in rows, name
    # Searching methods stay within the budget; the others use no validation data.
    for name, ev in raw["seeds"][0]["evals"].items():
        if not name.startswith("NPS-Pruning"):
            assert 0 < ev <= run.MINI.budget + 1e-9, (name, ev)
    for acc in raw["seeds"][0]["rows"].values():
        assert all(0.0 <= a <= 1.0 for a in acc)


def test_fine_tunes_learn_their_tasks(mini: tuple[Path, dict]) -> None:
    # Each fine-tune (two balanced-enough binary tasks) is well above chance.
    # (At this miniature size the tuned body is not reliably better than the
    # pre-trained body under its head: that comparison is the full run's.)
    _, raw = mini
    for acc in raw["seeds"][0]["rows"]["individual fine-tunes"][: len(raw["config"]["tasks"])]:
        assert acc >= 0.6


def test_claims_pruning_kernels_runtime_sections(mini: tuple[Path, dict]) -> None:
    import run

    out, raw = mini
    md = (out / "results.md").read_text()
    claims = _table_rows(md, "The papers' claims, here")
    # NeuroMerging > TIES, TIES > TA, NPS > TIES per fusion keep, NPS > magnitude per
    # pruning keep, Evolver ≥ best parent, and Evolver vs TIES for context.
    section = md.split("## The papers' claims, here")[1].split("\n## ")[0]
    n_rows = sum(1 for line in section.splitlines() if line.startswith("| ")) - 1
    assert n_rows == 4 + len(run.MINI.fusion_keeps) + len(run.MINI.keeps)
    for cells in claims.values():
        assert re.match(r"(reproduces|does not reproduce|inconclusive)", cells[-1]), cells
    pruning = _table_rows(md, "Pruning: keep ratio")
    assert {r for r in pruning} == set(run.MINI.tasks)
    pr = raw["seeds"][0]["pruning"]
    for task in run.MINI.tasks:
        for meth in ("NPS", "magnitude top-k", "DARE"):
            assert len(pr[task][meth]) == len(run.MINI.keeps), (task, meth)
            assert all(0.0 <= a <= 1.0 for a in pr[task][meth].values())
    kernels = _table_rows(md, "Merge kernels against the NumPy reference")
    import npsfuse

    assert set(kernels) == set(npsfuse.methods())
    for k in raw["kernels"]:
        if k["max_abs_diff"] is not None:
            assert k["max_abs_diff"] < 1e-5, k
    assert "Estimate for the full `make experiment`" in md
    est = raw["estimates"]["full `make experiment`"]["wall"]
    assert all(v >= 0 for v in est.values()) and sum(est.values()) > 0
