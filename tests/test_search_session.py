"""One engine behind both doors for NPS-Pruning's search: ``npsfuse.nps.Search``
/ ``prune`` (in process) and the daemon's ``nps_search`` sessions
(``npsfuse.Client.nps_search``) drive the same ``gocore/nps.Session``, so every
optimizer and DE strategy with the same seed gives, bit for bit, the same
candidates (hence the same scores), history, best weights, kept mask and
result; and a search saved (or a daemon killed) mid-run continues on the
same trajectory.

The daemon comes from ``test_daemon``'s fixtures (the bundled ``npsfused``, or
one built from the source tree).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from npsfuse import nps
from test_daemon import Daemon, npsfused_bin  # noqa: F401  (fixture)

#: A tiny model whose keys are not in name order: both doors must decompose
#: (and rank the global top-k) in name order anyway.
SHAPES = {"b.weight": (20, 12), "a.weight": (16, 20), "a.bias": (16,), "c.norm": (12,)}

SUBSPACES, GENERATIONS, POPSIZE, SEED, KEEP = 4, 3, 5, 9, 0.2

COSINE = {"kind": "cosine", "f_min": 0.2, "f_max": 0.8, "cr_min": 0.3, "cr_max": 0.9, "t": 2,
          "jitter": True}
CONSTANT = {"kind": "constant", "f": 0.6, "cr": 0.8}

#: (id, Search / prune keywords, Client.nps_search keywords): every optimizer
#: and strategy the NPS search accepts.
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("cma", {"optimizer": "cma"}, {"optimizer": "cma"}),
    # The default start (all 1) outside the box: scored as given, clipped for the optimizer,
    # in both doors (the daemon refused it).
    ("cma-start-outside-box", {"optimizer": "cma", "bounds": (0.2, 0.9)},
     {"optimizer": "cma", "bounds": (0.2, 0.9)}),
    ("cma-sigma0-magnitude-tensor", {"optimizer": "cma", "optimizer_options": {"sigma0": 0.3},
                                     "kind": "magnitude", "scope": "tensor"},
     {"optimizer": "cma", "sigma0": 0.3, "kind": "magnitude", "scope": "tensor"}),
    ("de-constant", {"optimizer": "de", "optimizer_options": {"schedule": CONSTANT}},
     {"optimizer": "de", "schedule": CONSTANT}),
    ("de-cade-default", {"optimizer": "de"}, {"optimizer": "de"}),
    ("de-cade-jitter", {"optimizer": "de", "optimizer_options": {"schedule": COSINE}},
     {"optimizer": "de", "schedule": COSINE}),
    ("de-best1bin", {"optimizer": "de", "optimizer_options": {"strategy": "best/1/bin"}},
     {"optimizer": "de", "strategy": "best/1/bin"}),
    ("de-current-to-best", {"optimizer": "de", "optimizer_options": {
        "strategy": "current-to-best/1/bin", "schedule": CONSTANT}},
     {"optimizer": "de", "strategy": "current-to-best/1/bin", "schedule": CONSTANT}),
]


def family(seed: int = 5) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    ft = {k: v + 0.2 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    return base, ft


def scorer(base: dict, ft: dict):
    """Closeness to a target between the base and the fine-tune, summed exactly
    (math.fsum), so equal bits give equal scores whatever the memory layout."""
    target = {k: base[k] + 0.6 * (ft[k] - base[k]) for k in base}

    def score(sd: dict[str, torch.Tensor]) -> float:
        return -math.fsum(x for k in sorted(target)
                          for x in ((sd[k] - target[k]).double() ** 2).flatten().tolist())

    return score


def bits(sd: dict[str, torch.Tensor]) -> dict[str, bytes]:
    return {k: t.contiguous().view(torch.uint8).numpy().tobytes() for k, t in sd.items()}


def common(kw: dict[str, Any]) -> dict[str, Any]:
    return {"density": KEEP, "subspaces": SUBSPACES, "generations": GENERATIONS, "popsize": POPSIZE,
            "seed": SEED, **kw}


def run_notebook(base: dict, ft: dict, kw: dict[str, Any]) -> dict[str, Any]:
    score = scorer(base, ft)
    asked: list[list[list[float]]] = []
    told: list[float] = []
    with nps.Search(base, ft, **common(kw)) as s:
        while not s.done:
            asked.append(s.candidates().tolist())
            scores = [score(sd) for sd in s.ask()]
            told += scores
            s.tell(scores)
        res = s.result()
    return {"asked": asked, "told": told, "res": res}


def run_daemon(d: Daemon, base: dict, ft: dict, kw: dict[str, Any]) -> dict[str, Any]:
    score = scorer(base, ft)
    c = d.client()
    s = c.nps_search(base, ft, **common(kw))
    asked: list[list[list[float]]] = []
    told: list[float] = []
    while True:
        cands = s.ask()
        if s.done:
            break
        asked.append([x.params for x in cands])
        scores = [score(x.state_dict()) for x in cands]
        told += scores
        s.tell(scores)
    best = s.best()
    s.finish()
    model = s.result(timeout=60)
    mask = c.submit_nps_prune(base, ft, density=KEEP, subspaces=SUBSPACES, weights=best["x"],
                              kind=kw.get("kind", "svd"), scope=kw.get("scope", "global"),
                              seed=SEED, output="task_vector").result(timeout=60)
    return {"asked": asked, "told": told, "best": best, "status": s.status()["result"],
            "model": model, "tau": mask}


@pytest.fixture(scope="module")
def daemon(npsfused_bin) -> Iterator[Daemon]:  # noqa: F811
    d = Daemon(npsfused_bin).start()
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def models() -> tuple[dict, dict]:
    return family()


@pytest.mark.parametrize(("py_kw", "daemon_kw"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_notebook_equals_daemon(daemon, models, py_kw, daemon_kw):
    base, ft = models
    want = run_notebook(base, ft, py_kw)
    got = run_daemon(daemon, base, ft, daemon_kw)
    res = want["res"]
    # The start point alone first (all weights 1: magnitude top-k), in both doors.
    assert [len(a) for a in want["asked"]] == [1] + [POPSIZE] * GENERATIONS
    assert want["asked"][0] == [[1.0] * SUBSPACES]
    assert got["asked"] == want["asked"]
    assert got["told"] == want["told"]  # every candidate model built alike, bit for bit
    best = got["best"]
    assert best["x"] == res.weights.tolist() and best["f"] == res.score
    assert best["start_f"] == res.start_score == want["told"][0]
    assert best["evaluations"] == res.evaluations == 1 + POPSIZE * GENERATIONS
    history = [{**{k: v for k, v in h.items() if k != "x"}, "weights": h["x"]}
               for h in best["history"]]
    assert history == res.history
    assert got["status"]["kept"] == res.kept
    assert bits(got["model"]) == bits(res.state_dict())
    assert bits(got["tau"]) == bits(res.task_vector())
    # Not a vacuous run: the search moved away from the start and improved on it.
    assert res.score > res.start_score
    assert any(a != want["asked"][1] for a in want["asked"][2:])


@pytest.mark.parametrize(("py_kw", "daemon_kw"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_resume_from_state_follows_the_same_trajectory(models, py_kw, daemon_kw):
    base, ft = models
    score = scorer(base, ft)
    full = run_notebook(base, ft, py_kw)
    s = nps.Search(base, ft, **common(py_kw))
    for _ in range(2):  # the start, then generation 1
        s.tell([score(sd) for sd in s.ask()])
    s.ask()  # killed between ask and tell
    saved = json.dumps(s.state())
    s.close()
    r = nps.Search.resume(saved, base, ft)
    asked = []
    while not r.done:
        asked.append(r.candidates().tolist())
        r.tell([score(sd) for sd in r.ask()])
    res = r.result()
    r.close()
    assert asked == full["asked"][2:]
    np.testing.assert_array_equal(res.weights, full["res"].weights)
    assert res.history == full["res"].history and res.score == full["res"].score
    assert bits(res.task_vector()) == bits(full["res"].task_vector())


def test_daemon_killed_mid_generation_resumes(npsfused_bin, models):  # noqa: F811
    """A CADE search whose daemon is killed between ask and tell continues, after
    the restart, on the trajectory of the notebook's uninterrupted run."""
    base, ft = models
    py_kw, daemon_kw = CASES[4][1:]
    want = run_notebook(base, ft, py_kw)
    score = scorer(base, ft)
    d = Daemon(npsfused_bin).start()
    try:
        s = d.client().nps_search(base, ft, **common(daemon_kw))
        asked = []
        while True:
            cands = s.ask()
            if s.done:
                break
            if len(asked) == 2:
                d.kill9()
                d.start()
                s.client = d.client()
                again = s.ask()
                assert [x.params for x in again] == [x.params for x in cands]
                cands = again
            asked.append([x.params for x in cands])
            s.tell([score(x.state_dict()) for x in cands])
        assert asked == want["asked"]
        assert s.best()["x"] == want["res"].weights.tolist()
        s.cancel()
    finally:
        d.cleanup()


def test_old_search_state_is_refused(models):
    base, ft = models
    with nps.Search(base, ft, density=KEEP, subspaces=SUBSPACES, generations=1) as s:
        state = s.state()
    state["version"] = 1
    with pytest.raises(ValueError, match="cannot be resumed"):
        nps.Search.resume(state, base, ft)
