"""The Optimizer wrapper over the Go CMA-ES and DE: ask/tell, state, handles."""

from __future__ import annotations

import gc
import json
import math

import numpy as np
import pytest
from npsfuse import _core
from npsfuse.optim import Optimizer, cosine_schedule

CENTER = np.array([0.3, 1.7, 1.1, 0.6])


def sphere(x: np.ndarray) -> float:
    """Negative squared distance to CENTER (maximum 0 at CENTER)."""
    return -float(((x - CENTER) ** 2).sum())


def run(opt: Optimizer, gens: int) -> None:
    for _ in range(gens):
        opt.tell([sphere(x) for x in opt.ask()])


def test_cma_reaches_the_optimum_of_a_4d_sphere() -> None:
    with Optimizer("cma", x0=[1.0] * 4, bounds=(0.0, 2.0), seed=3) as opt:
        assert opt.ask().shape == (4 + int(3 * math.log(4)), 4)  # default popsize
        run(opt, 80)
        best = opt.best()
        assert best.generation == 80
        np.testing.assert_allclose(best.x, CENTER, atol=1e-4)
        assert best.f > -1e-7


def test_cma_minimize() -> None:
    with Optimizer("cma", x0=[1.0] * 4, sigma0=0.5, seed=1, minimize=True) as opt:
        for _ in range(80):
            opt.tell([-sphere(x) for x in opt.ask()])
        np.testing.assert_allclose(opt.best().x, CENTER, atol=1e-4)


def test_de_improves_and_first_ask_is_the_initial_population() -> None:
    with Optimizer("de", x0=[1.0] * 4, bounds=(0.0, 2.0), popsize=12, seed=5,
                   schedule={"kind": "constant", "f": 0.6, "cr": 0.9}) as opt:
        pop = opt.ask()
        assert pop.shape == (12, 4)
        np.testing.assert_array_equal(pop[0], np.ones(4))  # x0 is individual 0
        assert np.all((pop >= 0) & (pop <= 2))
        opt.tell([sphere(x) for x in pop])
        assert opt.generation == 0  # evaluating the initial population is no generation
        first = opt.best().f
        run(opt, 60)
        assert opt.generation == 60
        assert opt.best().f > first
        assert opt.best().f > -1e-3


@pytest.mark.parametrize(
    "kind,kw",
    [
        ("cma", {}),
        ("de", {"strategy": "best/1/bin"}),
        ("de", {"schedule": cosine_schedule(10, jitter=True)}),
    ],
)
def test_state_round_trip_continues_bit_for_bit(kind: str, kw: dict) -> None:
    a = Optimizer(kind, x0=[1.0] * 4, bounds=(0.0, 2.0), popsize=8, seed=11, **kw)
    run(a, 5)
    b = Optimizer.restore(a.state())
    assert b.dim == 4 and b.optimizer == kind
    for _ in range(6):
        xa, xb = a.ask(), b.ask()
        np.testing.assert_array_equal(xa, xb)
        a.tell([sphere(x) for x in xa])
        b.tell([sphere(x) for x in xb])
    np.testing.assert_array_equal(a.best().x, b.best().x)
    assert a.best().f == b.best().f
    a.close()
    b.close()


def test_state_between_ask_and_tell_keeps_the_pending_batch() -> None:
    a = Optimizer("cma", x0=[1.0] * 4, bounds=(0.0, 2.0), seed=2)
    run(a, 2)
    pending = a.ask()
    b = Optimizer.restore(json.loads(a.state()))  # a dict is accepted too
    np.testing.assert_array_equal(b.ask(), pending)
    np.testing.assert_array_equal(a.ask(), pending)  # asking again repeats the batch
    b.tell([sphere(x) for x in pending])  # tell right after restore
    a.tell([sphere(x) for x in pending])
    np.testing.assert_array_equal(a.ask(), b.ask())


def test_failed_evaluations_rank_worst() -> None:
    with Optimizer("cma", x0=[1.0] * 2, bounds=(0.0, 2.0), popsize=6, seed=4) as opt:
        xs = opt.ask()
        opt.tell([None, float("nan"), float("inf"), float("-inf"), -1.0, -2.0])
        best = opt.best()
        np.testing.assert_array_equal(best.x, xs[4])
        assert best.f == -1.0


def test_best_before_any_success() -> None:
    with Optimizer("cma", x0=[1.0] * 2, bounds=(0.0, 2.0), popsize=4, seed=4) as opt:
        opt.ask()
        opt.tell([None] * 4)
        best = opt.best()
        assert best.f == -math.inf


def test_handles_are_freed() -> None:
    gc.collect()
    before = _core.go.NumHandlesLive()
    opt = Optimizer("cma", x0=[1.0] * 3, bounds=(0.0, 2.0))
    other = Optimizer.restore(opt.state())
    assert _core.go.NumHandlesLive() == before + 2
    opt.close()
    opt.close()  # idempotent
    assert _core.go.NumHandlesLive() == before + 1
    del other
    gc.collect()
    assert _core.go.NumHandlesLive() == before
    with pytest.raises(ValueError, match="closed"):
        opt.ask()


@pytest.mark.parametrize(
    "args,kw,match",
    [
        (("nelder-mead", [1.0]), {}, "unknown optimizer"),
        (("cma", [1.0, 1.0]), {"bounds": ([0.0, 2.0], [1.0, 1.0])},
         "coordinate 1: need finite Lo <= Hi"),
        (("cma", [1.0]), {"bounds": ([0.0, 0.0], [1.0, 1.0])}, r"scalar or 1 value\(s\)"),
        (("cma", [3.0]), {"bounds": (0.0, 2.0)}, "X0"),
        (("cma", [1.0]), {}, "Sigma0"),
        (("cma", [float("nan")]), {"sigma0": 1.0}, "finite"),
        (("cma", [1.0]), {"sigma0": 1.0, "popsize": 1}, "popsize"),
        (("de", [1.0]), {}, "bounds"),
        (("de", [1.0]), {"bounds": (0.0, 2.0), "strategy": "rand/2/exp"}, "strategy"),
        (("de", [1.0]), {"bounds": (0.0, 2.0), "schedule": {"kind": "cosine", "t": 0}},
         "schedule"),
        (("cma", []), {}, "dimension"),
    ],
)
def test_bad_configuration(args: tuple, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Optimizer(*args, **kw)


def test_tell_errors() -> None:
    with Optimizer("cma", x0=[1.0] * 2, bounds=(0.0, 2.0), popsize=4) as opt:
        with pytest.raises(ValueError):
            opt.tell([1.0] * 4)  # nothing pending
        opt.ask()
        with pytest.raises(ValueError):
            opt.tell([1.0] * 3)  # wrong count
        opt.tell([1.0] * 4)  # still pending after the failed tell


def test_restore_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        Optimizer.restore("{not json")
    with pytest.raises(ValueError):
        Optimizer.restore({"optimizer": "cma"})
