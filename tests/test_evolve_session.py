"""One engine behind both doors: ``npsfuse.Evolver`` (in process) and the
daemon's evolve sessions (``npsfuse.Client.evolve``) drive the same
``gocore/evolve.Session``, so every strategy with the same seed evolves bit
for bit alike: the same candidates (hence the same scores), the same final
population and the same result.

The daemon comes from ``test_daemon``'s fixtures (the bundled ``npsfused``,
or one built from the source tree).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import npsfuse
import pytest
import torch
from npsfuse.evolve import Evolver
from test_daemon import make_daemon, npsfused_bin  # noqa: F401  (fixtures)

#: A tiny model: two evolved layers and a head each individual keeps. The
#: keys are not in name order: both doors must flatten them alike anyway.
SHAPES = {"b.weight": (20, 6), "a.weight": (24, 20), "a.bias": (20,), "head.weight": (3, 6)}

POPSIZE, GENERATIONS, SEED = 4, 3, 7


def family(n: int = POPSIZE, seed: int = 3) -> tuple[dict, list[dict]]:
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
           for _ in range(n)]
    return base, fts


def score(sd: dict[str, torch.Tensor]) -> float:
    """Closeness of the evolved layers to a target, summed exactly (math.fsum)
    so that equal bits give equal scores whatever the memory layout."""
    err = [(sd["a.bias"] - 0.3).double() ** 2, (sd["b.weight"] - 0.1).double() ** 2,
           (sd["a.weight"] + 0.05).double() ** 2]
    return -math.fsum(x for e in err for x in e.flatten().tolist())


def bits(sd: dict[str, torch.Tensor]) -> dict[str, bytes]:
    return {k: t.contiguous().view(torch.uint8).numpy().tobytes() for k, t in sd.items()}


COSINE = {"kind": "cosine", "f_min": 0.2, "f_max": 0.8, "cr_min": 0.3, "cr_max": 0.9, "t": 2}

#: (id, Evolver keywords, Client.evolve keywords)
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("evolver", {}, {}),
    ("evolver-with-merger", {"merge": "ties", "merge_params": {"density": 0.6}},
     {"merge": "ties", "merge_params": {"density": 0.6}}),
    ("rand1bin-cade", {"strategy": "rand/1/bin", "schedule": "cosine", "F_bounds": (0.2, 0.8),
                       "CR_bounds": (0.3, 0.9), "period": 2, "force_index": False},
     {"strategy": "rand/1/bin", "schedule": COSINE}),
    ("rand1bin-with-merger", {"strategy": "rand/1/bin", "merge": "task_arithmetic",
                              "merge_params": {"lam": 0.7}, "force_index": True},
     {"strategy": "rand/1/bin", "merge": "task_arithmetic", "merge_params": {"lam": 0.7},
      "force_index": True}),
    ("best1bin", {"strategy": "best/1/bin"}, {"strategy": "best/1/bin", "force_index": True}),
    ("currenttobest1bin", {"strategy": "current-to-best/1/bin", "granularity": "tensor"},
     {"strategy": "current-to-best/1/bin", "force_index": True, "granularity": "tensor"}),
]


def run_notebook(base: dict, fts: list[dict], kw: dict[str, Any]) -> dict[str, Any]:
    told: list[float] = []

    def evaluate(sd: dict[str, torch.Tensor]) -> float:
        told.append(score(sd))
        return told[-1]

    ev = Evolver(base, fts, evaluate, generations=GENERATIONS, seed=SEED, exclude=[r"^head\."],
                 **kw)
    res = ev.run(progress=False)
    return {"told": told, "fitness": ev.fitness, "best": res.best_score,
            "population": [bits(ev.individual(i)) for i in range(POPSIZE)],
            "result": bits(res.state_dict())}


def run_daemon(client: npsfuse.Client, base: dict, fts: list[dict], kw: dict[str, Any]) -> dict:
    if "merge" in kw:
        kw = {**kw, "base": base}
    kw.setdefault("schedule", {"kind": "constant", "f": 0.5, "cr": 0.5})
    s = client.evolve(fts, generations=GENERATIONS, seed=SEED, exclude=["head.*"], **kw)
    told: list[float] = []
    while True:
        cands = s.ask()
        if s.done:
            break
        scores = [score(c.state_dict()) for c in cands]
        told += scores
        s.tell(scores)
    best = s.best()
    population = [bits(s.candidate_state_dict([-2, i])) for i in range(POPSIZE)]
    s.finish()
    return {"told": told, "fitness": [float(f) for f in best["fitness"]], "best": float(best["f"]),
            "population": population, "result": bits(s.result(timeout=60))}


@pytest.fixture(scope="module")
def models() -> tuple[dict, list[dict]]:
    return family()


@pytest.mark.parametrize(("py_kw", "daemon_kw"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_notebook_equals_daemon(make_daemon, models, py_kw, daemon_kw):  # noqa: F811
    base, fts = models
    want = run_notebook(base, fts, py_kw)
    got = run_daemon(make_daemon().client(), base, fts, dict(daemon_kw))
    init = 1 if "merge" in py_kw else POPSIZE
    assert len(want["told"]) == init + GENERATIONS * POPSIZE
    assert got["told"] == want["told"]  # every candidate scored alike
    assert got["fitness"] == want["fitness"]
    assert got["best"] == want["best"]
    assert got["population"] == want["population"]
    assert got["result"] == want["result"]
    # Not a vacuous run: some trial was accepted and changed the population.
    initial = [bits(sd) for sd in fts]
    if "merge" in py_kw:
        assert want["best"] > want["told"][0]
    assert want["population"] != initial


def test_generational_resume_rebuilds_held_trials(tmp_path: Path) -> None:
    """A DE run killed mid-generation (accepted trials waiting for the
    generation's end) resumes bit for bit: the held trials are rebuilt."""
    base, fts = family()
    kw: dict[str, Any] = {"strategy": "rand/1/bin", "generations": GENERATIONS, "seed": SEED,
                          "exclude": [r"^head\."]}
    full = Evolver(base, fts, score, **kw)
    want = full.run(progress=False)
    calls = {"n": 0}

    class Killed(Exception):
        pass

    def dying(sd: dict[str, torch.Tensor]) -> float:
        calls["n"] += 1
        if calls["n"] == POPSIZE + POPSIZE + 3:  # 3 trials into generation 2
            raise Killed
        return score(sd)

    first = Evolver(base, fts, dying, **kw)
    with pytest.raises(Killed):
        first.run(checkpoint=tmp_path / "ckpt", progress=False)
    # Save mid-generation too, with accepted trials held.
    resumed = Evolver.resume(tmp_path / "ckpt", score)
    for _ in range(3):
        resumed.tell(score(resumed.ask()))
    assert resumed._held, "no accepted trial is waiting: the test does not test the rebuild"
    resumed.save(tmp_path / "mid")
    again = Evolver.resume(tmp_path / "mid", score)
    got = again.run(progress=False)
    assert got.history == want.history
    assert got.fitness == want.fitness
    assert [bits(again.individual(i)) for i in range(POPSIZE)] == [
        bits(full.individual(i)) for i in range(POPSIZE)
    ]
