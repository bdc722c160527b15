"""The experiment (experiments/): its configuration, cost model and a 1-seed,
2-task miniature of ``make experiment`` end to end.

The miniature fine-tunes MiniLM's top layer on two packaged text tasks, runs
every merging method, search, the pruning study and the report writer, then
checks the report's structure and the study's rules (budgets, λ grid, the
cost model's work counts) — never its accuracies.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import config  # noqa: E402
import cost  # noqa: E402
import names  # noqa: E402


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    import study

    out = tmp_path_factory.mktemp("experiment")
    raw = study.run(config.MINI, out, log=lambda msg: None, full=config.Config())
    return out, raw


def _section(md: str, heading: str) -> str:
    return md.split(f"## {heading}")[1].split("\n## ")[0]


def _table_rows(md: str, heading: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    header_seen = False
    for line in _section(md, heading).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or set(cells[1]) <= set("-"):
            continue
        if header_seen:
            rows[cells[0]] = cells[1:]
        header_seen = True
    return rows


# ------------------------------------------------------- no model needed --


@pytest.mark.parametrize(("overrides", "message"), [
    ({"head": "mlp"}, "head must be one of"),
    ({"tuned_layers": 7}, "tuned_layers must be in 1…6"),
    ({"lam_grid": []}, "lam_grid"),
    ({"keeps": [0.0]}, "keeps must lie in"),
    ({"budget": 3}, "cannot hold NPS fusion"),
    ({"no_such_key": 1}, "unknown configuration key"),
    ({"searches": ["annealing"]}, "unknown search"),
])
def test_bad_configuration_is_named(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config.Config().with_overrides(overrides)


def test_command_line_layers_preset_file_tasks_and_set(tmp_path: Path) -> None:
    import run

    f = tmp_path / "study.yaml"
    f.write_text("tasks: [sms_spam, r8]\nlr: 0.001\nlam_grid: [0.1, 1.0]\n")
    args = run.parser().parse_args(["--demo", "--config", str(f), "--tasks", "tweets,election",
                                    "--set", "epochs=3", "--set", "head=probe"])
    cfg = run.build_config(args)
    assert cfg.tasks == ["tweets", "election"]  # --tasks wins over the file
    assert (cfg.lr, cfg.lam_grid, cfg.epochs, cfg.head) == (0.001, [0.1, 1.0], 3, "probe")
    assert cfg.val_search == config.DEMO.val_search  # the rest from the preset
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        run.build_config(run.parser().parse_args(["--tasks", "sms_spam,nope"]))


def test_every_task_has_one_prompt_per_class_and_loads() -> None:
    import tasks

    assert {"sms_spam", "tweets", "movies", "amazon", "nyt", "bbc", "r8", "newsgroups",
            "election"} <= set(tasks.TASKS)
    for t in tasks.TASKS.values():
        assert len(t.prompts) == len(t.classes) == t.n_classes >= 2, t.name
        s = tasks.split(t, 0, 200, 300, 300)
        labels = s.train[1] + s.val[1] + s.test[1]
        assert set(labels) <= set(range(t.n_classes)), t.name
        assert len(s.val[0]) == 300 and len(s.test[0]) == 300, t.name
        assert not set(s.test[0]) & (set(s.train[0]) | set(s.val[0])), t.name


def test_out_of_domain_task_is_outside_the_population_and_shares_a_family() -> None:
    import study
    import tasks

    full = config.Config()
    t, why = study.resolve_ood(full)
    assert t is not None and t.name not in full.tasks, why
    assert t.family in {tasks.get(n).family for n in full.tasks}
    # Non-topic families come first: with a sentiment task left out, it is chosen.
    t, _ = study.resolve_ood(full.with_overrides({"tasks": ["sms_spam", "tweets", "bbc"]}))
    assert t is not None and t.family == "sentiment"
    assert study.resolve_ood(full.with_overrides({"ood_task": None}))[0] is None


def test_joint_evaluation_matches_per_task_evaluation() -> None:
    """All tasks in one length-sorted pass give each example the embedding it
    gets in its own task's pass (val_score and test rely on it)."""
    import model
    import torch

    enc = model.Encoder(1, 16)
    theta = enc.top_state()
    g = torch.Generator().manual_seed(0)

    def feats(n: int) -> model.Features:
        lens = torch.randint(2, 17, (n,), generator=g)
        mask = torch.arange(16)[None, :] < lens[:, None]
        h = (torch.randn(n, 16, enc.hidden_size, generator=g) * mask[..., None]).half()
        return model.Features(h, mask, torch.randint(0, 2, (n,), generator=g))

    fs = [feats(37), feats(20), feats(51)]
    joint = model.embed_in_order(enc, theta, model.concat(fs), batch=16)
    pos = 0
    for f in fs:
        z, _ = model.embed(enc, theta, f, batch=16)  # length order within the task
        own = torch.empty_like(z)
        own[model.by_length(f)] = z
        torch.testing.assert_close(joint[pos:pos + len(f)], own, rtol=1e-5, atol=1e-5)
        pos += len(f)


def test_fit_recovers_per_call_and_per_unit_costs() -> None:
    samples = [(1.0, u, 0.2 + 1e-4 * u, 0.0) for u in (500, 1000, 5000, 20000)]
    a, b = cost.fit(samples, 2)
    assert a == pytest.approx(0.2) and b == pytest.approx(1e-4)
    # Negative intercepts fall back to a proportional rate.
    a, b = cost.fit([(1.0, u, 1e-4 * u - 0.05, 0.0) for u in (1000, 2000, 4000)], 2)
    assert a == 0.0 and b > 0


# ------------------------------------------------------------- miniature --


def test_lambda_rows_only_for_methods_with_lambda() -> None:
    """A row chooses λ only for a method that takes one: the others (karcher,
    multislerp, sce, ram) refuse ``lam`` other than its default, so a λ grid
    fails them whenever λ* is not 1 (the full study's karcher did)."""
    import methods

    plan = methods.plan(config.Config(skip_methods=[]))
    for spec in plan.specs:
        if spec.lam_grid:
            assert methods.has_lambda(spec.method), spec
    no_lam = {s.method for s in plan.specs if not methods.has_lambda(s.method)}
    assert {"karcher", "sce"} <= no_lam, no_lam


def test_files_written(mini: tuple[Path, dict]) -> None:
    out, _ = mini
    for name in ("results.md", "raw.json", "accuracy.png", "claims.png", "pruning.png",
                 "searches.png", "lambda.png", "ood.png"):
        assert (out / name).stat().st_size > 0, name
    json.loads((out / "raw.json").read_text())


def test_every_row_present_and_sane(mini: tuple[Path, dict]) -> None:
    import methods
    import searches

    out, raw = mini
    seed = raw["seeds"][0]
    assert not seed["failed"], seed["failed"]
    rows = _table_rows((out / "results.md").read_text(), "Multi-task merging")
    plan = methods.plan(config.MINI)
    expected = [names.PRETRAINED, names.PROBE, names.INDIVIDUAL, names.BEST_PARENT,
                *[s.row for s in plan.specs], *searches.search_rows(config.MINI)]
    if plan.adamerging:
        expected.append(names.ADAMERGING)
    assert names.lam_row("ties", config.MINI.density) in expected
    for name in expected:
        assert name in rows, f"{name} missing from the table"
        accs = [float(c.strip("*").split("±")[0]) for c in rows[name][:3]]
        assert all(0.0 <= a <= 100.0 for a in accs), (name, accs)
    for accs in seed["rows"].values():
        assert len(accs) == len(config.MINI.tasks) and all(0.0 <= a <= 1.0 for a in accs)
    # Methods the run could not apply are named with a reason (slerp applies to 2 tasks).
    assert "slerp" not in seed["skipped"]
    assert all(reason for reason in seed["skipped"].values())


def test_budgets_and_lambda_grid(mini: tuple[Path, dict]) -> None:
    import searches

    _, raw = mini
    seed, grid = raw["seeds"][0], config.MINI.lam_grid
    evals = seed["evals"]
    for row in searches.search_rows(config.MINI):
        assert 0 < evals[row] <= config.MINI.budget + 1e-9, (row, evals[row])
    assert seed["lam"], "no row chose λ"
    for row, info in seed["lam"].items():
        assert info["lam"] in grid and info["grid"] == grid, row
        assert len(info["scores"]) == len(grid) and evals[row] == len(grid), row
        assert info["rebuild_ok"], (row, info["rebuild_diff"])
    for row in (names.AVERAGING, names.TA_NOVAL, names.NEURO_NOVAL):
        assert evals[row] == 0, row


def test_criteria_and_claims_sections(mini: tuple[Path, dict]) -> None:
    out, _ = mini
    md = (out / "results.md").read_text()
    crit = _section(md, "Headroom criteria")
    for key in ("(a)", "(b)", "(c)", "(d)"):
        assert f"| {key} |" in crit, key
    assert crit.count("| (c) |") == 3
    verdicts = re.findall(r"\*\*(met|not met[^*]*|not measurable[^*]*|not measured)\*\*", crit)
    assert len(verdicts) == 6, crit
    claims = _table_rows(md, "The papers' claims, here")
    for cells in claims.values():
        assert re.match(r"(reproduces|does not reproduce|inconclusive|not measured)", cells[-1])
    text = " ".join(claims)
    for needle in ("NeuroMerging > TIES", "TIES > Task Arithmetic", "NPS fusion > TIES",
                   "CADE converges faster", "NPS keeps ≥ 99%", "Evolver ≥ its merger (TIES) out "
                   "of domain", "NPS > magnitude trim"):
        assert needle in text, needle


def test_pruning_at_equal_storage(mini: tuple[Path, dict]) -> None:
    import pruning

    _, raw = mini
    pr = raw["seeds"][0]["pruning"]
    assert set(pr) == set(config.MINI.tasks)
    for task, res in pr.items():
        for meth in pruning.METHODS:
            assert [float(k) for k in res[meth]] == config.MINI.keeps, (task, meth)
            for r in res[meth].values():
                assert 0.0 <= r["acc"] <= 1.0 and 0.0 < r["bits"] < 16.0, (task, meth, r)
        for k in res["NPS"]:
            mag, low = res["magnitude top-k"][k]["bits"], res["low-rank (TSV-style)"][k]["bits"]
            # Mask + values at keep k: 1 bit + k · 16 bits per parameter; low-rank fits in it.
            assert mag == pytest.approx(1 + 16 * float(k), abs=0.1)
            assert res["NPS"][k]["bits"] == pytest.approx(mag, abs=0.05)
            assert 0.5 * mag < low <= mag + 1e-9


def test_cost_model_counts_the_work_done(mini: tuple[Path, dict]) -> None:
    out, raw = mini
    work = raw["estimates"]["this run"]["work"]
    for phase in ("methods", "pruning", "out-of-domain", "fine-tune"):
        measured = raw["phases"][phase]
        for key in ("eval#calls", "train#calls"):
            if key in work[phase] or key in measured:
                assert measured.get(key, 0) == pytest.approx(work[phase].get(key, 0)), (phase,
                                                                                       key)
    md = (out / "results.md").read_text()
    assert "Estimate for the full `make experiment`" in md
    full = raw["estimates"]["full"]["wall"]
    assert all(v >= 0 for v in full.values()) and sum(full.values()) > 0
