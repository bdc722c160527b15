"""Ray fan-out (issue 17): every search gives the same run on Ray workers as in-process.

One local Ray cluster (``ray.init(num_cpus=2)`` on loopback) and one pool of
two worker actors serve the whole module: Ray start-up takes seconds, the
searches below a few each. Each test runs a search in-process and on the
pool with the same seed and compares the histories and the best candidate
exactly; one kills a worker mid-generation with ``ray.kill``.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import npsfuse
import numpy as np
import pytest
import torch
from conftest import make_family
from npsfuse import nps
from npsfuse.evolve import Evolver
from test_daemon import make_daemon, npsfused_bin  # noqa: F401  (fixtures)

ray = pytest.importorskip("ray")
from npsfuse import _executor, executors  # noqa: E402  (after the skip)

SHAPES = {"a.weight": (24, 16), "a.bias": (16,), "b.weight": (16, 8)}
BASE, MODELS = make_family(SHAPES, n_models=4, seed=3)
#: The optimum mixes the models tensor by tensor, so that trials get accepted.
TARGET = {"a.weight": MODELS[0]["a.weight"], "a.bias": MODELS[1]["a.bias"],
          "b.weight": MODELS[2]["b.weight"]}


def score(sd: dict[str, torch.Tensor]) -> float:
    """A smooth dev metric with its optimum off the start points."""
    return -float(sum(((sd[k].float() - TARGET[k]) ** 2).sum() for k in SHAPES))


def slow_score(sd: dict[str, torch.Tensor]) -> float:
    """``score`` that takes a while, so that a worker can be killed mid-evaluation."""
    time.sleep(0.05)
    return score(sd)


@pytest.fixture(scope="module")
def pool() -> Iterator[list[Any]]:
    # The workers unpickle this module's functions by value (they cannot import it).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        actors = [executors.new_worker(num_cpus=0) for _ in range(2)]
        ray.get([a.ping.remote() for a in actors])
        yield actors
    finally:
        ray.shutdown()


def _same_history(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b) > 0
    for ra, rb in zip(a, b, strict=True):
        assert ra == rb


def test_prune_matches_in_process(pool: list[Any]) -> None:
    kw = dict(density=0.2, subspaces=4, generations=3, popsize=6, seed=5, progress=False)
    local = nps.prune(BASE, MODELS[0], score, **kw)
    remote = nps.prune(BASE, MODELS[0], score, executor=pool, **kw)
    assert remote.score == local.score and remote.evaluations == local.evaluations == 19
    np.testing.assert_array_equal(remote.weights, local.weights)
    _same_history(remote.history, local.history)


def test_fuse_matches_in_process(pool: list[Any]) -> None:
    taus = [{k: m[k] - BASE[k] for k in SHAPES} for m in MODELS[:3]]
    kw = dict(optimizer="de", generations=3, popsize=6, seed=2, progress=False)
    local = nps.fuse(BASE, taus, score, **kw)
    remote = nps.fuse(BASE, taus, score, executor=executors.RayExecutor(actors=pool), **kw)
    assert remote.score == local.score
    np.testing.assert_array_equal(remote.lambdas, local.lambdas)
    _same_history(remote.history, local.history)


@pytest.mark.parametrize("optimizer", ["de", "cma"])
def test_search_merge_matches_in_process(pool: list[Any], optimizer: str) -> None:
    kw = dict(optimizer=optimizer, generations=3, popsize=6, seed=1, progress=False,
              params={"lam": (0.2, 1.5)}, per_model=False)
    local = npsfuse.search_merge(BASE, MODELS, "task_arithmetic", score, **kw)
    remote = npsfuse.search_merge(BASE, MODELS, "task_arithmetic", score, executor=pool, **kw)
    assert remote.params == local.params and remote.best_score == local.best_score
    _same_history(remote.history, local.history)


def _evolver(**kw: Any) -> Evolver:
    return Evolver(BASE, MODELS, score, **({"generations": 3, "seed": 4} | kw))


def _bits(ev: Evolver) -> list[bytes]:
    return [ev._slots[ev._slot_of[i]].numpy().tobytes() for i in range(ev.popsize)]


@pytest.mark.parametrize("kw", [
    {"strategy": "rand/1/bin"},                      # generational: whole generations
    {"strategy": "best/1/bin", "granularity": "tensor"},
    # Immediate replacement: speculative windows. Seed 3 has trials that a
    # window planned before an acceptance and that use the replaced individual
    # (results that must be thrown away).
    {"strategy": "evolver", "seed": 3},
    {"strategy": "evolver", "merge": "task_arithmetic", "seed": 3},
], ids=["rand1", "best1-tensor", "evolver", "merger"])
def test_evolver_matches_in_process(pool: list[Any], kw: dict[str, Any]) -> None:
    local, remote = _evolver(**kw), _evolver(**kw)
    a = local.run(progress=False)
    b = remote.run(executor=pool, progress=False)
    assert a.history == b.history and a.fitness == b.fitness
    assert a.best_index == b.best_index and a.best_score == b.best_score
    assert sum(r["accepted"] for r in a.history) > 0  # the replacements were exercised
    assert _bits(local) == _bits(remote)
    for k, t in a.state_dict().items():
        assert torch.equal(t, b.state_dict()[k]), k


def test_evolver_checkpoints_every_generation(pool: list[Any], tmp_path: Any) -> None:
    ev = _evolver(strategy="rand/1/bin")
    saved: list[int] = []
    real_save = ev.save

    def save(path: Any) -> None:
        saved.append(ev.generation)
        real_save(path)

    ev.save = save  # type: ignore[method-assign]
    ev.run(executor=pool, checkpoint=tmp_path / "ck", progress=False)
    assert saved == [0, 1, 2, 3]
    back = Evolver.resume(tmp_path / "ck", score)
    assert back.done and back.history == ev.history and _bits(back) == _bits(ev)


def test_killed_worker_does_not_change_the_result(
    pool: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    kw = {"strategy": "rand/1/bin", "generations": 4}
    want = Evolver(BASE, MODELS, slow_score, seed=4, **kw).run(progress=False)
    # The module's two workers and one of this executor's own, which dies
    # mid-search and is replaced.
    ex = executors.RayExecutor(1, actor_options={"num_cpus": 0}, max_restarts=1)
    victim = ex.actors[0]
    ray.get(victim.ping.remote())  # started, so that the kill lands mid-search
    ex._actors += pool
    real_map, calls = _executor._Run.map, []
    killer = threading.Timer(0.02, ray.kill, args=(victim,))

    def map_then_kill(run: Any, descs: Any) -> Any:
        calls.append(len(descs))
        if len(calls) == 3:  # generation 2 of 4: kill the worker while it evaluates
            killer.start()
        return real_map(run, descs)

    monkeypatch.setattr(_executor._Run, "map", map_then_kill)
    try:
        got = Evolver(BASE, MODELS, slow_score, seed=4, **kw).run(executor=ex, progress=False)
    finally:
        killer.cancel()
        ex._actors = [a for a in ex._actors if a not in pool]
        ex.shutdown()
    assert ex._restarts == 0, "the worker was not killed during the search"
    assert got.history == want.history and got.best_score == want.best_score
    assert got.best_index == want.best_index


def test_user_pool_shrinks_when_a_worker_dies(pool: list[Any]) -> None:
    dead = executors.new_worker(num_cpus=0)
    ray.kill(dead)
    ex = executors.RayExecutor(actors=[pool[0], dead])
    kw = dict(optimizer="de", generations=2, popsize=4, seed=1, progress=False,
              params={"lam": (0.2, 1.5)}, per_model=False)
    local = npsfuse.search_merge(BASE, MODELS, "task_arithmetic", score, **kw)
    remote = npsfuse.search_merge(BASE, MODELS, "task_arithmetic", score, executor=ex, **kw)
    assert remote.params == local.params and ex.actors == [pool[0]]


def failing(sd: dict[str, torch.Tensor]) -> float:
    if int(abs(float(sd["a.weight"].sum())) * 1e4) % 3 == 0:  # about one candidate in 3
        raise ArithmeticError("no score for this one")
    return score(sd)


def nan_sometimes(sd: dict[str, torch.Tensor]) -> float:
    return math.nan if int(abs(float(sd["a.weight"].sum())) * 1e4) % 3 == 0 else score(sd)


def test_evaluate_errors_behave_as_in_process(pool: list[Any]) -> None:
    """The policy of every search: NaN is a failed candidate, an error raises."""
    kw = dict(density=0.2, subspaces=4, generations=2, popsize=6, seed=5, progress=False)
    with pytest.warns(RuntimeWarning, match="candidate failed"):
        local = nps.prune(BASE, MODELS[0], nan_sometimes, **kw)
    with pytest.warns(RuntimeWarning, match="candidate failed"):
        remote = nps.prune(BASE, MODELS[0], nan_sometimes, executor=pool, **kw)
    assert remote.failures == local.failures
    assert (remote.score == local.score) or (math.isnan(remote.score) and math.isnan(local.score))
    with pytest.raises(ArithmeticError, match="no score"):
        nps.prune(BASE, MODELS[0], failing, executor=pool, **kw)
    with pytest.raises(ArithmeticError, match="no score"):
        npsfuse.search_merge(BASE, MODELS, "task_arithmetic", failing, executor=pool,
                             generations=1, popsize=4, progress=False,
                             params={"lam": (0.2, 1.5)})


@pytest.mark.parametrize("bad, exc, match", [
    ("dask", ValueError, "executor must be None, 'ray'"),
    (3, TypeError, "executor must be None"),
])
def test_bad_executor(bad: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        npsfuse.search_merge(BASE, MODELS, "task_arithmetic", score, executor=bad,
                             generations=1, progress=False)


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'npsfuse\[ray\]'"):
        executors.RayExecutor(1)
    with pytest.raises(ImportError, match=r"pip install 'npsfuse\[ray\]'"):
        npsfuse.search_merge(BASE, MODELS, "task_arithmetic", score, executor="ray",
                             generations=1, progress=False)


def test_daemon_session_on_ray_workers(pool: list[Any], make_daemon: Any) -> None:  # noqa: F811
    """A daemon evolve session whose candidates Ray workers download and score
    evolves as the in-process Evolver does."""
    import test_evolve_session as tes

    ray.cloudpickle.register_pickle_by_value(tes)
    py_kw, daemon_kw = next(c[1:] for c in tes.CASES if c[0] == "rand1bin-cade")
    base, fts = tes.family()
    want = tes.run_notebook(base, fts, py_kw)
    s = make_daemon().client().evolve(fts, generations=tes.GENERATIONS, seed=tes.SEED,
                                      exclude=["head.*"], **daemon_kw)
    best = executors.drive_session(s, tes.score, pool, progress=False)
    s.finish()
    assert [float(f) for f in best["fitness"]] == want["fitness"]
    assert float(best["f"]) == want["best"]
    assert tes.bits(s.result(timeout=60)) == want["result"]
