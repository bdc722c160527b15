"""Tests of ``npsfuse.search_merge``: merge hyper-parameter search with DE,
CADE's cosine schedule and CMA-ES (the Go optimisers behind npsfuse.optim)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import npsfuse
import pytest
import torch
from npsfuse._search_merge import _merge_fn

SHAPES = {"a.weight": (20, 12), "a.bias": (12,), "b.weight": (6, 12)}


def _distance_to(target: dict[str, torch.Tensor]) -> Callable[[dict], float]:
    def score(sd: dict) -> float:
        return -sum(float(((sd[k] - target[k]) ** 2).sum()) for k in target)

    return score


def _tau_sum(base: dict, models: list[dict], w: list[float]) -> dict[str, torch.Tensor]:
    return {k: base[k] + sum(wi * (m[k] - base[k]) for wi, m in zip(w, models, strict=True))
            for k in base}


@pytest.mark.parametrize("optimizer", ["de", "cma"])
def test_finds_lambda(family: Callable, optimizer: str) -> None:
    base, models = family(SHAPES, 3, seed=1)
    score = _distance_to(_tau_sum(base, models, [1.3] * 3))
    res = npsfuse.search_merge(base, models, "task_arithmetic", score, params={"lam": (0.5, 2.0)},
                               optimizer=optimizer, generations=15, popsize=6, seed=2,
                               progress=False)
    assert res.params["lam"] == pytest.approx(1.3, abs=0.02)
    assert res.best_score >= res.start_score
    assert res.start_score == score(npsfuse.merge(base, models, "task_arithmetic"))
    bests = [h["best"] for h in res.history]
    assert bests == sorted(bests)
    assert score(res.state_dict()) == res.best_score


def test_per_model_weights(family: Callable) -> None:
    base, models = family(SHAPES, 3, seed=3)
    w = [0.5, 1.5, 1.0]
    score = _distance_to(_tau_sum(base, models, w))
    res = npsfuse.search_merge(base, models, "task_arithmetic", score, params={"weight": (0, 2)},
                               optimizer="cma", generations=40, seed=0, progress=False)
    assert res.names == ["weight[0]", "weight[1]", "weight[2]"]
    assert res.params["weights"] == pytest.approx(w, abs=0.03)


def test_cade_de_improves_ties(family: Callable) -> None:
    base, models = family(SHAPES, 3, seed=4)
    target = npsfuse.merge(base, models, "ties", density=0.35, lam=1.4)
    score = _distance_to(target)
    res = npsfuse.search_merge(base, models, "ties", score, schedule="cosine", generations=12,
                               popsize=10, seed=5, progress=False, per_model=False)
    assert set(res.params) == {"lam", "density"}
    assert res.best_score > res.start_score
    assert res.params["lam"] == pytest.approx(1.4, abs=0.15)


def test_per_model_densities_reach_the_engine(family: Callable) -> None:
    base, models = family(SHAPES, 3, seed=5)
    run = _merge_fn(base, models, "ties", {})
    equal = run({"density": [0.3, 0.3, 0.3], "lam": 1.2})
    plain = npsfuse.merge(base, models, "ties", density=0.3, lam=1.2)
    assert all(torch.equal(equal[k], plain[k]) for k in plain)
    mixed = run({"density": [0.1, 0.3, 0.9], "lam": 1.2})
    assert any(not torch.equal(mixed[k], plain[k]) for k in plain)
    score = _distance_to(plain)
    res = npsfuse.search_merge(base, models, "ties", score, generations=2, popsize=5,
                               progress=False)
    assert len(res.params["density"]) == 3 and "lam" in res.params
    assert res.best_score == score(res.state_dict())


def test_plot_and_errors(family: Callable, tmp_path: Path) -> None:
    base, models = family(SHAPES, 2, seed=6)
    score = _distance_to(base)
    res = npsfuse.search_merge(base, models, "linear", score, generations=1, popsize=4,
                               progress=False, params={"weight": (0.1, 1.0)})
    res.plot(str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    for kw, match in [
        ({"params": {"nope": (0, 1)}}, "cannot search"),
        ({"params": {"lam": (2, 1)}}, "lo <= hi"),
        ({"optimizer": "pso"}, "optimizer"),
        ({"schedule": "linear"}, "schedule"),
        ({"generations": 0}, "generations"),
        ({"params": {}}, "nothing to search"),
    ]:
        with pytest.raises(ValueError, match=match):
            npsfuse.search_merge(base, models, "linear", score, progress=False, **kw)
    # the engine's words, as npsfuse.merge and the YAML configs say it
    with pytest.raises(ValueError, match=r'^unknown merge method "nope" \(valid: .*ties'):
        npsfuse.search_merge(base, models, "nope", score, progress=False)
    with pytest.raises(ValueError, match=r'^unknown merge method "nope" \(valid: .*ties'):
        npsfuse.Evolver(base, models, score, merge="nope")


class _Stop(Exception):
    pass


@pytest.mark.parametrize("optimizer", ["de", "cma"])
def test_checkpoint_resumes_exactly(family: Callable, tmp_path: Path, optimizer: str) -> None:
    """Interrupted mid-search, the checkpoint continues to the uninterrupted
    run's result and history; another search's checkpoint is refused."""
    base, models = family(SHAPES, 3, seed=6)
    score = _distance_to(_tau_sum(base, models, [1.2] * 3))
    kw = {"params": {"lam": (0.5, 2.0), "weight": (0, 2)}, "optimizer": optimizer,
          "generations": 5, "popsize": 6, "seed": 3, "progress": False}
    want = npsfuse.search_merge(base, models, "task_arithmetic", score, **kw)
    calls = [0]

    def flaky(sd: dict) -> float:
        calls[0] += 1
        if calls[0] == 17:  # inside the third generation
            raise _Stop
        return score(sd)

    ck = tmp_path / "search.json"
    with pytest.raises(_Stop):
        npsfuse.search_merge(base, models, "task_arithmetic", flaky, checkpoint=ck, **kw)
    assert ck.is_file()
    saved = len(json.loads(ck.read_text())["history"])
    assert 0 < saved < len(want.history)
    seen = [0]

    def counted(sd: dict) -> float:
        seen[0] += 1
        return score(sd)

    got = npsfuse.search_merge(base, models, "task_arithmetic", counted, checkpoint=ck, **kw)
    # only the generations after the checkpoint were evaluated again
    assert seen[0] == want.history[-1]["evaluations"] - want.history[saved - 1]["evaluations"]
    assert got.history == want.history and got.params == want.params
    assert got.best_score == want.best_score and got.start_score == want.start_score
    with pytest.raises(ValueError, match="other seed"):
        npsfuse.search_merge(base, models, "task_arithmetic", score, checkpoint=ck,
                             **{**kw, "seed": 4})
