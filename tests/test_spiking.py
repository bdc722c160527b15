"""Spiking networks (SpikingJelly) as Evolver / daemon individuals (issue 19):
the rule set of ``npsfuse.spiking``, the state reset around evaluations, a
tiny spiking network evolving bit for bit alike in process and through the
daemon, untouched kept tensors, and resume after a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import npsfuse
import pytest
import torch
from npsfuse import spiking
from npsfuse.evolve import Evolver
from test_daemon import make_daemon, npsfused_bin  # noqa: F401  (fixtures)
from torch import nn

sj = pytest.importorskip("spikingjelly.activation_based",
                         reason="spikingjelly is not installed (pip install 'npsfuse[spiking]')")
from spikingjelly.activation_based import layer, neuron  # noqa: E402

T, POPSIZE, GENERATIONS, SEED = 3, 4, 3, 11


class TinySNN(nn.Module):
    """Linear → BatchNorm → PLIF → Linear, multi-step over T steps."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = layer.Linear(6, 8, step_mode="m")
        self.bn = layer.BatchNorm1d(8, step_mode="m")
        self.sn = neuron.ParametricLIFNode(step_mode="m", detach_reset=True)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.sn(self.bn(self.fc1(x.unsqueeze(0).repeat(T, 1, 1))))
        return self.fc2(s).mean(0)


class BufferedNeuron(nn.Module):
    """A neuron in the style of code that keeps its membrane potential as a
    persistent buffer (listed in ``_memories`` like SpikingJelly's): it must
    never evolve, whatever its name."""

    def __init__(self) -> None:
        super().__init__()
        self.v_threshold = 1.0
        self.register_buffer("membrane", torch.zeros(8))
        self._memories = {"membrane": 0.0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.membrane >= self.v_threshold).float()


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 6, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def family() -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A base and POPSIZE 'fine-tunes', each with its own BatchNorm
    statistics and counter (as real fine-tunes have)."""
    torch.manual_seed(0)
    net = TinySNN()
    base = {k: v.clone() for k, v in net.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    pop = []
    for i in range(POPSIZE):
        sd = {k: (v + 0.2 * torch.randn(v.shape, generator=g) if v.is_floating_point()
                  else v + i + 1) for k, v in base.items()}
        sd["bn.running_var"] = sd["bn.running_var"].abs() + 0.5
        pop.append(sd)
    return base, pop


def loss_score(model: nn.Module) -> float:
    """Minus the cross-entropy on fixed data, summed exactly (equal bits give
    equal scores)."""
    x, y = data()
    return -math.fsum(torch.nn.functional.cross_entropy(model(x), y, reduction="none")
                      .double().tolist())


def bits(sd: dict[str, torch.Tensor]) -> dict[str, bytes]:
    return {k: t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            for k, t in sd.items()}


# ------------------------------------------------------------------ rules --


@pytest.mark.parametrize(
    ("kw", "evolved", "kept"),
    [
        ({}, {"fc1.weight", "fc1.bias", "sn.w", "bn.weight", "bn.bias", "fc2.weight",
              "fc2.bias"},
         {"bn.running_mean": "exclude rule", "bn.running_var": "exclude rule",
          "bn.num_batches_tracked": "not floating-point"}),
        ({"neuron_params": False}, {"fc1.weight", "fc1.bias", "bn.weight", "bn.bias",
                                    "fc2.weight", "fc2.bias"},
         {"sn.w": "neuron parameter"}),
        ({"exclude": (*spiking.SPIKING_EXCLUDE, r"^fc2\.")},
         {"fc1.weight", "fc1.bias", "sn.w", "bn.weight", "bn.bias"},
         {"fc2.weight": r"exclude rule ^fc2\."}),
        ({"include": [r"^fc1\."]}, {"fc1.weight", "fc1.bias"}, {"sn.w": "not included"}),
    ],
    ids=["defaults", "no-neuron-params", "head-kept", "include"],
)
def test_split_rules(kw, evolved, kept) -> None:
    s = spiking.split(TinySNN(), **kw)
    assert set(s.evolved) == evolved
    assert list(s.evolved) == sorted(s.evolved)
    for name, why in kept.items():
        assert s.kept[name].startswith(why), (name, s.kept[name])
    assert set(s.evolved).isdisjoint(s.kept)
    assert set(s.evolved) | set(s.kept) == set(TinySNN().state_dict())


def test_membrane_buffers_never_evolve() -> None:
    net = nn.Sequential(nn.Linear(4, 8), BufferedNeuron())
    assert "1.membrane" in net.state_dict()
    assert spiking.memory_names(net) == ["1.membrane"]
    # Kept even with no exclude rule at all: the module says it is a memory.
    assert spiking.split(net, exclude=()).kept["1.membrane"] == "neuron memory"
    assert spiking.split(net).evolved == ("0.bias", "0.weight")
    # From a bare state dict the default name rules catch SpikingJelly's names.
    sd = {"sn.v": torch.zeros(3), "sn.v_seq": torch.zeros(3), "fc.weight": torch.zeros(3),
          "bn.running_var": torch.ones(3)}
    assert spiking.split(sd).evolved == ("fc.weight",)


@pytest.mark.parametrize(
    ("bad", "err", "match"),
    [
        ({"exclude": ["("]}, ValueError, "exclude: bad regular expression"),
        ({"include": [r"^nothing$"]}, ValueError, "no floating-point tensor is left"),
        ({"exclude": [3]}, TypeError, "exclude rules must be strings"),
    ],
)
def test_split_refuses(bad, err, match) -> None:
    with pytest.raises(err, match=match):
        spiking.split(TinySNN(), **bad)


def test_exclude_renderings_name_exactly_the_kept_tensors() -> None:
    import fnmatch
    import re

    s = spiking.split({"a.b": torch.zeros(2), "a.bxc": torch.zeros(2), "w[0]": torch.zeros(1),
                       "n": torch.zeros(1, dtype=torch.long)}, exclude=[r"^a\.b$", r"\["])
    assert s.evolved == ("a.bxc",)
    rx = s.evolver_exclude()
    assert [k for k in ("a.b", "a.bxc", "w[0]") if any(re.search(p, k) for p in rx)] == [
        "a.b", "w[0]"]
    # Globs with metacharacters escaped (Go's path.Match semantics for [ and \).
    assert s.daemon_exclude() == ["a.b", r"w\[0\]"]
    assert not fnmatch.fnmatchcase("a.bxc", s.daemon_exclude()[0])


# ------------------------------------------------------------------ reset --


def test_evaluator_resets_state_between_candidates() -> None:
    torch.manual_seed(1)
    net = TinySNN()
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    x, _ = data()

    def raw_score(m: nn.Module) -> float:  # no reset of its own
        return float(m(x).sum())

    evaluate = spiking.evaluator(net, raw_score)
    first = evaluate(sd)
    assert evaluate(sd) == first  # the membrane of the first call did not leak
    assert isinstance(net.sn.v, float)  # reset after scoring too (v back to v_reset)
    # Without the reset the second pass starts from the first one's membrane.
    net.eval()
    with torch.no_grad():
        a, b = raw_score(net), raw_score(net)
    spiking.reset(net)
    assert a == first and b != first


# -------------------------------------------------- evolution, two doors --


CADE = {"strategy": "rand/1/bin", "schedule": "cosine", "F_bounds": (0.2, 0.8),
        "CR_bounds": (0.3, 0.9), "period": 2, "force_index": False}
CADE_DAEMON = {"strategy": "rand/1/bin", "schedule": {"kind": "cosine", "f_min": 0.2,
               "f_max": 0.8, "cr_min": 0.3, "cr_max": 0.9, "t": 2}}


def run_notebook(base, pop) -> tuple[Evolver, list[float], object]:
    net = TinySNN()
    told: list[float] = []
    score = spiking.evaluator(net, loss_score)

    def record(sd):
        told.append(score(sd))
        return told[-1]

    ev = Evolver(base, pop, record, generations=GENERATIONS, seed=SEED,
                 exclude=spiking.split(net).evolver_exclude(), **CADE)
    return ev, told, ev.run(progress=False)


def run_daemon(client: npsfuse.Client, pop: list[dict]) -> dict:
    net = TinySNN()
    score = spiking.evaluator(net, loss_score)
    sess = client.evolve(pop, generations=GENERATIONS, seed=SEED,
                         exclude=spiking.split(net).daemon_exclude(), **CADE_DAEMON)
    told: list[float] = []
    while True:
        cands = sess.ask()
        if sess.done:
            break
        scores = [score(c.state_dict()) for c in cands]  # the parent's kept tensors included
        told += scores
        sess.tell(scores)
    best = sess.best()
    population = [bits(sess.candidate_state_dict([-2, i])) for i in range(POPSIZE)]
    sess.finish()
    return {"told": told, "fitness": [float(f) for f in best["fitness"]],
            "population": population, "result": bits(sess.result(timeout=60))}


KEPT = ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked")


def test_notebook_equals_daemon_on_a_spiking_network(make_daemon) -> None:  # noqa: F811
    base, pop = family()
    ev, told, res = run_notebook(base, pop)
    assert len(told) == POPSIZE * (GENERATIONS + 1)
    assert sum(h["accepted"] for h in res.history[1:]) > 0  # not a vacuous run
    want_pop = [bits(ev.individual(i)) for i in range(POPSIZE)]
    assert want_pop != [bits(sd) for sd in pop]

    got = run_daemon(make_daemon().client(), pop)
    assert got["told"] == told  # every candidate scored alike
    assert got["fitness"] == ev.fitness
    assert got["population"] == want_pop
    assert got["result"] == bits(res.state_dict())
    # Kept tensors are untouched: every individual still holds its own.
    for i in range(POPSIZE):
        for k in KEPT:
            assert got["population"][i][k] == want_pop[i][k] == bits(pop[i])[k], (i, k)


def test_deterministic_and_kept_tensors_untouched() -> None:
    base, pop = family()
    before = [bits(sd) for sd in pop]
    ev1, told1, res1 = run_notebook(base, pop)
    ev2, told2, res2 = run_notebook(base, pop)
    assert told1 == told2
    assert bits(res1.state_dict()) == bits(res2.state_dict())
    assert [bits(sd) for sd in pop] == before  # the caller's models are not written
    changed = set()
    for i in range(POPSIZE):
        got = bits(ev1.individual(i))
        for k in KEPT:
            assert got[k] == before[i][k], (i, k)
        changed |= {k for k in got if got[k] != before[i][k]}
    assert changed and changed.isdisjoint(KEPT)
    assert "sn.w" in changed or "fc1.weight" in changed
    # A different seed gives a different run (the comparison above can fail).
    other = Evolver(base, pop, spiking.evaluator(TinySNN(), loss_score), generations=GENERATIONS,
                    seed=SEED + 1, exclude=spiking.split(TinySNN()).evolver_exclude(),
                    **CADE)
    other.run(progress=False)
    assert [bits(other.individual(i)) for i in range(POPSIZE)] != [
        bits(ev1.individual(i)) for i in range(POPSIZE)]


def test_resume_after_checkpoint_gives_the_same_trajectory(tmp_path: Path) -> None:
    base, pop = family()
    full, told, want = run_notebook(base, pop)
    net = TinySNN()
    score = spiking.evaluator(net, loss_score)
    calls = {"n": 0}

    class Killed(Exception):
        pass

    def dying(sd) -> float:
        calls["n"] += 1
        if calls["n"] == 2 * POPSIZE + 2:  # two trials into generation 2
            raise Killed
        return score(sd)

    first = Evolver(base, pop, dying, generations=GENERATIONS, seed=SEED,
                    exclude=spiking.split(net).evolver_exclude(), **CADE)
    with pytest.raises(Killed):
        first.run(checkpoint=tmp_path / "ckpt", progress=False)
    resumed_told: list[float] = []

    def record(sd) -> float:
        resumed_told.append(score(sd))
        return resumed_told[-1]

    again = Evolver.resume(tmp_path / "ckpt", record)
    got = again.run(progress=False)
    assert resumed_told == told[2 * POPSIZE:]  # generation 2 on, trial for trial
    assert got.history == want.history
    assert [bits(again.individual(i)) for i in range(POPSIZE)] == [
        bits(full.individual(i)) for i in range(POPSIZE)]


def test_search_merge_takes_a_spiking_evaluator() -> None:
    """search_merge over a spiking family: the reset-wrapped evaluate works
    there too (the merge copies BatchNorm counters from the base)."""
    base, pop = family()
    pop = [{**sd, "bn.num_batches_tracked": base["bn.num_batches_tracked"]} for sd in pop]
    evaluate = spiking.evaluator(TinySNN(), loss_score)
    res = npsfuse.search_merge(base, pop, "task_arithmetic", evaluate, generations=2,
                               popsize=4, seed=1, progress=False)
    assert math.isfinite(res.best_score)


def test_evolver_include_and_individual_statistics() -> None:
    """``Evolver(include=...)`` evolves only matching tensors; without a
    merger, individuals may hold their own BatchNorm counters (fine-tunes
    do), but every one needs the base's tensors."""
    base, pop = family()
    ev = Evolver(base, pop, lambda sd: 0.0, include=[r"^fc1\."])
    assert ev.num_params == 6 * 8 + 8
    with pytest.raises(ValueError, match="check include and exclude"):
        Evolver(base, pop, lambda sd: 0.0, include=[r"^nothing"])
    lacking = [pop[0], {k: v for k, v in pop[1].items() if k != "bn.num_batches_tracked"}]
    with pytest.raises(ValueError, match=r"population\[1\] lacks tensor 'bn.num_batches_tracked'"):
        Evolver(base, lacking, lambda sd: 0.0)
    # A merger copies integer tensors from the base: differing counters are refused.
    with pytest.raises(TypeError, match="num_batches_tracked"):
        Evolver(base, pop, lambda sd: 0.0, merge="task_arithmetic")
