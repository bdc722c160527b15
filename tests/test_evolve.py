"""Tests of ``npsfuse.Evolver`` and its Go kernels (``gocore/evolve``).

The operators are checked bit for bit against a pure-Python/NumPy
re-implementation of their definition (xoshiro256** streams keyed by
(seed, generation, individual, chunk), the documented draw order, float32
donor arithmetic). The evolution itself is checked for one-to-one selection,
on a small real task (tiny MLP, synthetic data, three fine-tunes), for exact
resume after a killed run, and for thread-count invariance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import npsfuse
import numpy as np
import pytest
import torch
from npsfuse import _core
from npsfuse._bridge import ArrowPack
from npsfuse.evolve import Evolver
from torch import nn

# ----------------------------------------------------- reference streams --

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
CHUNK = 1 << 14  # gocore/parallel.Chunk: part of the kernels' definition
SPARSE_CR = 1 / 16


def mix(z: int) -> int:
    """SplitMix64 finaliser on Python ints."""
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def fnv1a64(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def key(seed: int, name: str, m: int) -> int:
    return mix(mix(seed ^ fnv1a64(name)) + m)


def trial_key(seed: int, g: int, i: int) -> int:
    return mix(key(seed, "npsfuse/evolve/trial", g) + i)


def bits(k: int, i: int) -> int:
    return mix(k + (i + 1) * GOLDEN)


def rotl(x: int, k: int) -> int:
    return ((x << k) | (x >> (64 - k))) & M64


class Xoshiro:
    """xoshiro256** seeded by SplitMix64, as gocore/search.RNG."""

    def __init__(self, seed: int) -> None:
        x, self.s = seed, []
        for _ in range(4):
            x = (x + GOLDEN) & M64
            self.s.append(mix(x))

    def next(self) -> int:
        s = self.s
        out = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return out

    def float64(self) -> float:
        return (self.next() >> 11) * 2.0**-53

    def intn(self, n: int) -> int:
        m = self.next() * n
        hi, lo = m >> 64, m & M64
        if lo < n:
            thresh = ((1 << 64) - n) % n
            while lo < thresh:
                m = self.next() * n
                hi, lo = m >> 64, m & M64
        return hi


def pick_distinct(r: Xoshiro, n: int, exclude: int, k: int) -> list[int]:
    used = [exclude] if 0 <= exclude < n else []
    avail = n - len(used)
    out = []
    for kk in range(k):
        u = r.intn(avail - kk)
        pos = 0
        while pos < len(used) and u >= used[pos]:
            u += 1
            pos += 1
        out.append(u)
        used.insert(pos, u)
    return out


def binomial_mask(r: Xoshiro, n: int, cr: float, forced: bool) -> list[bool]:
    jr = r.intn(n) if forced and n > 0 else -1
    return [r.float64() < cr or j == jr for j in range(n)]


def schedule_params(spec: dict[str, Any], g: int) -> tuple[float, float]:
    if spec["kind"] == "constant":
        return spec["f"], spec["cr"]
    t = spec["t"]
    gg = g % (2 * t)
    c = 0.5 * (1 + math.cos(math.pi * gg / t))
    return (spec["f_min"] + (spec["f_max"] - spec["f_min"]) * c,
            spec["cr_min"] + (spec["cr_max"] - spec["cr_min"]) * c)


def best_of(fit: Sequence[float], exclude: int) -> int:
    b, bv = -1, -math.inf
    for j, v in enumerate(fit):
        if j == exclude:
            continue
        v = v if math.isfinite(v) else -math.inf
        if b < 0 or v > bv:
            b, bv = j, v
    return b


def element_mask(seed: int, g: int, i: int, n: int, cr: float, jr: int) -> np.ndarray:
    """The element crossover mask from its definition (dense lanes / sparse gaps)."""
    k = trial_key(seed, g, i)
    m = np.zeros(n, dtype=bool)
    for b in range((n + CHUNK - 1) // CHUNK):
        lo, hi = b * CHUNK, min((b + 1) * CHUNK, n)
        r = Xoshiro(bits(k, b))
        if cr >= SPARSE_CR:
            thr = math.floor(cr * 65536 + 0.5)
            for j in range(lo, hi, 4):
                w = r.next()
                for lane in range(min(4, hi - j)):
                    m[j + lane] = ((w >> (16 * lane)) & 0xFFFF) < thr
        elif cr > 0:
            lq = math.log1p(-cr)
            j = lo - 1
            while True:
                x = math.log(1 - r.float64()) / lq
                if not math.isfinite(x) or math.floor(x) > hi - j - 2:
                    break
                j += 1 + math.floor(x)
                m[j] = True
    if jr >= 0:
        m[jr] = True
    return m


def reference_trial(
    cfg: dict[str, Any], g: int, i: int, fit: Sequence[float], pop: Sequence[np.ndarray]
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Trial vector of individual i at generation g, its references and mask,
    from the definitions."""
    n, np_ = len(pop[0]), len(pop)
    F, CR = schedule_params(cfg["schedule"], g)  # noqa: N806
    CR = min(max(CR, 0.0), 1.0)  # noqa: N806
    r = Xoshiro(trial_key(cfg["seed"], g, i))
    s = cfg["strategy"]
    if s == "evolver":
        u = r.float64()
        G = cfg["generations"]  # noqa: N806
        p = 1.0 if G - g <= 1 else 0.5 / (G - g) + 0.5
        refs = pick_distinct(r, np_, i, 1) if cfg["random_ref"] or u < p else [best_of(fit, i)]
    elif s == "rand/1/bin":
        refs = pick_distinct(r, np_, i, 3)
    else:
        rr = pick_distinct(r, np_, i, 2)
        refs = [best_of(fit, -1), *rr]
    f = np.float32(F)
    x = pop[i]
    if s == "evolver":
        donor = x + f * (pop[refs[0]] - x)
    elif s == "current-to-best/1/bin":
        donor = x + f * (pop[refs[0]] - x) + f * (pop[refs[1]] - pop[refs[2]])
    else:
        donor = pop[refs[0]] + f * (pop[refs[1]] - pop[refs[2]])
    gran = cfg["granularity"]
    if gran == "element":
        jr = r.intn(n) if cfg["force_index"] and n > 0 else -1
        mask = element_mask(cfg["seed"], g, i, n, CR, jr)
    else:
        if gran == "tensor":
            seg = cfg["segments"]
        else:
            bs = cfg["block_size"]
            seg = [*range(0, n, bs), n]
        sm = binomial_mask(r, len(seg) - 1, CR, cfg["force_index"])
        mask = np.zeros(n, dtype=bool)
        for kk, take in enumerate(sm):
            mask[seg[kk] : seg[kk + 1]] = take
    return np.where(mask, donor, x).astype(np.float32), refs, mask


def go_trial(
    cfg: dict[str, Any], g: int, i: int, fit: Sequence[float], pop: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Individual i's trial at generation g, with fitness ``fit``, from the
    engine session (``gocore/evolve.Session``): initial scores ``fit``, then
    rejected trials (−inf) until i's trial of generation g is open."""
    sess = {**cfg, "population": len(pop), "n": pop[0].numel()}
    state = json.loads(_core.call(_core.go.EvolveStart, json.dumps(sess)))

    def tell(score: float) -> dict[str, Any]:
        return json.loads(_core.call(_core.go.EvolveTell, json.dumps(state), score))["state"]

    for v in fit:
        state = tell(v)
    while True:
        cands = json.loads(_core.call(_core.go.EvolveAsk, json.dumps(state)))
        trial = next((c["trial"] for c in cands if c["individual"] == i), None)
        if cands[0]["generation"] == g and trial is not None:
            break
        state = tell(-math.inf)
    out = torch.empty_like(pop[0])
    pack = ArrowPack([(f"x{j}", t) for j, t in enumerate(pop)] + [("out", out)])
    taken = _core.call(_core.go.EvolveOffspring, json.dumps(state), i, len(pop), pack.arrays,
                       pack.schemas)
    return out, {**trial, "taken": taken}


def make_cfg(**kw: Any) -> dict[str, Any]:
    cfg = {"strategy": "evolver", "schedule": {"kind": "constant", "f": 0.5, "cr": 0.5},
           "granularity": "element", "block_size": 1000, "segments": None, "force_index": False,
           "random_ref": False, "seed": 12345, "generations": 10}
    cfg.update(kw)
    return cfg


N_REF = 2 * CHUNK + 3001


@pytest.fixture(scope="module")
def ref_pop() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal(N_REF).astype(np.float32) for _ in range(5)]


CADE = {"kind": "cosine", "f_min": 1e-6, "f_max": 1e-5, "cr_min": 1e-6, "cr_max": 1e-5, "t": 40}


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"schedule": {"kind": "constant", "f": 0.3, "cr": 0.02}},
        {"schedule": {"kind": "constant", "f": 0.7, "cr": 0.0}, "force_index": True},
        {"random_ref": True, "schedule": {"kind": "constant", "f": 0.5, "cr": 1.0}},
        {"strategy": "rand/1/bin", "force_index": True,
         "schedule": {"kind": "constant", "f": 0.8, "cr": 0.9}},
        {"strategy": "rand/1/bin", "schedule": CADE},
        {"strategy": "best/1/bin", "force_index": True,
         "schedule": {"kind": "constant", "f": 0.5, "cr": 0.0625}},
        {"strategy": "current-to-best/1/bin", "force_index": True,
         "schedule": {"kind": "constant", "f": 0.6, "cr": 0.3}},
        {"granularity": "block", "block_size": 999, "force_index": True},
        {"granularity": "tensor", "segments": [0, 10, 5000, CHUNK + 7, N_REF],
         "strategy": "current-to-best/1/bin"},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "evolver-default",
)
def test_operators_match_reference(kw: dict[str, Any], ref_pop: list[np.ndarray]) -> None:
    cfg = make_cfg(**kw)
    fit = [0.25, 0.75, math.nan, 0.75, -1.0]
    pop_t = [torch.from_numpy(x) for x in ref_pop]
    for g, i in [(0, 0), (3, 2), (9, 4)]:
        out, info = go_trial(cfg, g, i, fit, pop_t)
        want, refs, mask = reference_trial(cfg, g, i, fit, ref_pop)
        assert info["refs"] == refs
        assert info["taken"] == int(mask.sum())
        got = out.numpy()
        diff = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
        assert diff.size == 0, f"g={g} i={i}: {diff.size} elements differ, first {diff[:5]}"


def test_known_vectors() -> None:
    """Hand-checkable case: CR = 1, dyadic values, F = 0.5."""
    pop = [torch.tensor(v, dtype=torch.float32) for v in
           ([1, 2, 3, 4], [0.5, -1, 4, 0], [2, 2, 2, 2], [-3, 0.25, 1, 8])]
    cfg = make_cfg(strategy="rand/1/bin", schedule={"kind": "constant", "f": 0.5, "cr": 1.0})
    out, info = go_trial(cfg, 0, 0, [0.0] * 4, pop)
    r1, r2, r3 = info["refs"]
    want = [pop[r1][j] + 0.5 * (pop[r2][j] - pop[r3][j]) for j in range(4)]
    assert out.tolist() == [float(w) for w in want]
    assert sorted(info["refs"]) == [1, 2, 3] and info["taken"] == 4


def test_sparse_mask_rate(ref_pop: list[np.ndarray]) -> None:
    """Geometric gaps give Bernoulli(CR): counts within 6 sd of n·CR."""
    pop_t = [torch.from_numpy(x) for x in ref_pop]
    for cr in (0.001, 0.01, 0.05):
        cfg = make_cfg(schedule={"kind": "constant", "f": 0.5, "cr": cr})
        taken = [go_trial(cfg, g, 1, [0.0] * 5, pop_t)[1]["taken"] for g in range(8)]
        n = 8 * N_REF
        assert abs(sum(taken) - n * cr) < 6 * math.sqrt(n * cr * (1 - cr))


# ------------------------------------------------------------ a toy model --

DIM, HIDDEN, CLASSES = 16, 48, 3


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, CLASSES))


def _task(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(DIM, CLASSES, generator=g)
    shared = torch.randn(DIM, CLASSES, generator=torch.Generator().manual_seed(0))
    x = torch.randn(n, DIM, generator=torch.Generator().manual_seed(1000 + seed + n))
    y = (x @ (0.5 * shared + 0.5 * teacher)).argmax(1)
    return x, y


def _train(
    m: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, seed: int
) -> None:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(m(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="module")
def toy() -> dict[str, Any]:
    """Base MLP trained on task 0, three fine-tunes on tasks 1–3, dev and test sets."""
    torch.manual_seed(0)
    base = _mlp()
    _train(base, *_task(0, 2000), steps=200, lr=3e-3, seed=0)
    base_sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    fts = []
    for t in (1, 2, 3):
        m = _mlp()
        m.load_state_dict(base_sd)
        _train(m, *_task(t, 2000), steps=150, lr=2e-3, seed=t)
        fts.append({k: v.detach().clone() for k, v in m.state_dict().items()})
    dev = [_task(t, 300) for t in (1, 2, 3)]
    test = [_task(t, 1000) for t in (1, 2, 3)]
    return {"base": base_sd, "fts": fts, "dev": dev, "test": test}


def _scorer(data: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[dict], float]:
    model = _mlp()

    @torch.no_grad()
    def score(sd: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(sd)
        return float(np.mean([float((model(x).argmax(1) == y).float().mean()) for x, y in data]))

    return score


def test_real_task_beats_initial_and_ties(toy: dict[str, Any], capsys: Any) -> None:
    dev, test = _scorer(toy["dev"]), _scorer(toy["test"])
    ties = npsfuse.merge(toy["base"], toy["fts"], "ties", density=0.5)
    initial = {f"fine-tune {t + 1}": sd for t, sd in enumerate(toy["fts"])} | {"TIES": ties}
    ev = Evolver(toy["base"], toy["fts"], dev, add_merges=("ties",), merge_params={"density": 0.5},
                 generations=6, seed=1)
    res = ev.run(progress=False)
    evolved = res.state_dict()
    assert dev(evolved) == res.best_score  # the returned weights are the selected ones
    best_initial = max(dev(sd) for sd in initial.values())
    assert res.best_score >= best_initial
    assert res.best_score >= dev(ties)
    assert sum(h["accepted"] for h in res.history) > 0

    merged_ev = Evolver(toy["base"], toy["fts"], dev, merge="ties", merge_params={"density": 0.5},
                        generations=4, seed=2)
    mres = merged_ev.run(progress=False)
    assert mres.history[0]["best"] == dev(ties)
    assert dev(mres.state_dict()) == mres.best_score >= dev(ties)
    with capsys.disabled():
        print("\n  held-out (mean accuracy over 3 tasks; selection on dev only):")
        rows = [*initial.items(), ("Evolver", evolved), ("Evolver+TIES", mres.state_dict())]
        for name, sd in rows:
            print(f"    {name:<14} dev {dev(sd):.4f}  test {test(sd):.4f}")


# --------------------------------------------------------- selection etc --


def _family(n_models: int = 4, seed: int = 0) -> tuple[dict, list[dict]]:
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(40, 30, generator=g), "b": torch.randn(30, generator=g),
            "head.weight": torch.randn(3, 30, generator=g), "pos": torch.arange(6)}
    models = []
    for _ in range(n_models):
        sd = {k: (v + 0.2 * torch.randn(v.shape, generator=g) if v.is_floating_point()
                  else v.clone()) for k, v in base.items()}
        models.append(sd)
    return base, models


def _quadratic(base: dict) -> Callable[[dict], float]:
    target = {k: v + 0.1 for k, v in base.items() if k in ("w", "b")}

    def score(sd: dict) -> float:
        return -sum(float(((sd[k] - target[k]) ** 2).sum()) for k in target)

    return score


@pytest.mark.parametrize("strategy", ["evolver", "rand/1/bin", "best/1/bin",
                                      "current-to-best/1/bin"])
def test_selection_never_lowers_fitness(strategy: str) -> None:
    base, models = _family(5)
    score = _quadratic(base)
    ev = Evolver(base, models, score, strategy=strategy, F=0.4, CR=0.7, generations=5,
                 exclude=["head"], seed=3)
    prev = None
    while not ev.done:
        ev.tell(score(ev.ask()))
        fit = ev.fitness
        if prev is not None and all(math.isfinite(v) for v in prev):
            assert all(a >= b for a, b in zip(fit, prev, strict=True))
        prev = fit
    for i in range(ev.popsize):  # stored fitness is the individual's own score
        assert score(ev.individual(i)) == ev.fitness[i]
        assert torch.equal(ev.individual(i)["head.weight"], models[i]["head.weight"])
        assert torch.equal(ev.individual(i)["pos"], models[i]["pos"])
    bests = [h["best"] for h in ev.history]
    assert bests == sorted(bests)


def test_failed_evaluations_are_never_accepted() -> None:
    base, models = _family(3)
    score = _quadratic(base)
    ev = Evolver(base, models, score, generations=2)
    for _ in range(3):
        ev.tell(score(ev.ask()))
    before = [ev.individual(i)["w"].clone() for i in range(3)]
    for _ in range(3):
        ev.ask()
        assert ev.tell(math.nan) is False
    assert all(torch.equal(before[i], ev.individual(i)["w"]) for i in range(3))


def test_ask_tell_protocol() -> None:
    base, models = _family(2)
    ev = Evolver(base, models, _quadratic(base), generations=1)
    with pytest.raises(RuntimeError, match="without a pending"):
        ev.tell(0.0)
    a = ev.ask()
    assert ev.ask() is a
    while not ev.done:
        ev.tell(-1.0)
        if not ev.done:
            ev.ask()
    with pytest.raises(RuntimeError, match="finished"):
        ev.ask()
    assert [h["generation"] for h in ev.history] == [0, 1]


def test_cosine_schedule_in_history() -> None:
    base, models = _family(4)
    ev = Evolver(base, models, _quadratic(base), strategy="rand/1/bin", schedule="cosine",
                 generations=5)
    res = ev.run(progress=False)
    for h in res.history[1:]:
        g = h["generation"] - 1
        want = 1e-6 + 0.5 * (1e-5 - 1e-6) * (1 + math.cos(math.pi * g / 5))
        assert h["F"] == pytest.approx(want, rel=1e-12)
        assert h["CR"] == pytest.approx(want, rel=1e-12)
    ev2 = Evolver(base, models, _quadratic(base), schedule="cosine", F_bounds=(0.1, 0.9),
                  CR_bounds=(0.2, 0.6), period=2, generations=5)
    fs = [h["F"] for h in ev2.run(progress=False).history[1:]]
    assert fs == pytest.approx([0.9, 0.5, 0.1, 0.5, 0.9])


def _population_bits(ev: Evolver) -> list[bytes]:
    return [ev._slots[ev._slot_of[i]].view(torch.uint8).numpy().tobytes()
            for i in range(ev.popsize)]


class _Killed(Exception):
    pass


@pytest.mark.parametrize("mode", ["memory", "dir", "merge"])
def test_resume_is_bit_for_bit(mode: str, tmp_path: Path) -> None:
    base, models = _family(4, seed=5)
    score = _quadratic(base)
    kw: dict[str, Any] = {"generations": 4, "seed": 11, "exclude": ["head"]}
    if mode == "dir":
        kw["storage"] = tmp_path / "pop"
    if mode == "merge":
        kw |= {"merge": "dare_ties", "merge_params": {"density": 0.6, "seed": 3}}
    full = Evolver(base, models, score, **kw)
    want = full.run(progress=False)

    calls = {"n": 0}

    def dying(sd: dict) -> float:
        calls["n"] += 1
        if calls["n"] == 11:  # mid-generation 2
            raise _Killed
        return score(sd)

    kw2 = dict(kw)
    if mode == "dir":
        kw2["storage"] = tmp_path / "pop2"
    first = Evolver(base, models, dying, **kw2)
    with pytest.raises(_Killed):
        first.run(checkpoint=tmp_path / "ckpt", progress=False)
    resumed = Evolver.resume(tmp_path / "ckpt", score)
    got = resumed.run(checkpoint=tmp_path / "ckpt", progress=False)
    assert got.history == want.history
    assert got.fitness == want.fitness
    assert _population_bits(resumed) == _population_bits(full)
    a, b = got.state_dict(), want.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_storage_dir_matches_memory(tmp_path: Path) -> None:
    base, models = _family(4, seed=2)
    score = _quadratic(base)
    mem = Evolver(base, models, score, generations=3, seed=4)
    disk = Evolver(base, models, score, generations=3, seed=4, storage=tmp_path)
    assert len(list(tmp_path.glob("slot-*.bin"))) == 5
    assert mem.run(progress=False).history == disk.run(progress=False).history
    assert _population_bits(mem) == _population_bits(disk)


def test_thread_count_invariance(restore_threads: None) -> None:
    base, models = _family(4, seed=6)
    base["big"] = torch.randn(3 * CHUNK + 11)
    for sd in models:
        sd["big"] = base["big"] + 0.1 * torch.randn(base["big"].shape)
    score = _quadratic(base)
    runs = []
    for th in (1, 2, 3):
        npsfuse.set_num_threads(th)
        ev = Evolver(base, models, score, CR=0.3, generations=2)
        ev.run(progress=False)
        runs.append(_population_bits(ev))
    assert runs[0] == runs[1] == runs[2]


def test_granularities_and_bf16() -> None:
    base, models = _family(4, seed=8)
    score = _quadratic(base)
    for kw in ({"granularity": "tensor"}, {"granularity": "block", "block_size": 7},
               {"compute_dtype": torch.bfloat16}, {"compute_dtype": "model"}):
        ev = Evolver(base, models, score, generations=2, **kw)
        res = ev.run(progress=False)
        assert res.best_score >= res.history[0]["best"]
        if kw.get("compute_dtype") is torch.bfloat16:
            assert ev.individual(0)["w"].dtype == torch.bfloat16
    # Tensor granularity: every evolved tensor of the offspring comes whole from
    # the parent or from the donor.
    ev = Evolver(base, models, score, granularity="tensor", generations=3)
    for _ in range(4):
        ev.tell(score(ev.ask()))
    kinds = set()
    for _ in range(8):
        off = ev.ask()
        parent = ev.individual(ev._cand["individual"])
        for k in ("w", "b"):
            same = off[k] == parent[k]
            assert bool(same.all()) or not bool(same.any())
            kinds.add(bool(same.all()))
        ev.tell(score(off))
    assert kinds == {True, False}


def test_plot(tmp_path: Path) -> None:
    base, models = _family(3)
    res = Evolver(base, models, _quadratic(base), generations=2).run(progress=False)
    res.plot(tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("kw", "exc", "match"),
    [
        ({"strategy": "rand/2/bin"}, ValueError, "unknown strategy"),
        ({"strategy": "rand/1/bin"}, ValueError, "at least 4"),
        ({"granularity": "row"}, ValueError, "granularity"),
        ({"generations": 0}, ValueError, "generations"),
        ({"CR": 1.5}, ValueError, "CR"),
        ({"F_bounds": (0.1, 0.2)}, ValueError, "cosine"),
        ({"schedule": "cosine", "F_bounds": (0.5, 0.1)}, ValueError, "F_bounds"),
        ({"schedule": "linear"}, ValueError, "schedule"),
        ({"merge": "nope"}, ValueError, "merge method"),
        ({"merge": "ties", "strategy": "best/1/bin"}, ValueError, "per-individual"),
        ({"exclude": ["."]}, ValueError, "nothing|no floating"),
        ({"compute_dtype": torch.float64}, TypeError, "compute_dtype"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_errors(kw: dict[str, Any], exc: type[Exception], match: str) -> None:
    base, models = _family(3)
    with pytest.raises(exc, match=match):
        Evolver(base, models, _quadratic(base), **kw)


def test_go_rejects_bad_trial_input() -> None:
    pop = [torch.zeros(10) for _ in range(3)]
    with pytest.raises(ValueError, match="at least 4"):
        go_trial(make_cfg(strategy="rand/1/bin"), 0, 0, [0.0] * 3, pop)
    with pytest.raises(ValueError, match="granularity"):
        go_trial(make_cfg(granularity="row"), 0, 0, [0.0] * 3, pop)
    with pytest.raises(ValueError, match="session state"):
        _core.call(_core.go.EvolveAsk, '{"phase": "init"}')
    state = _core.call(_core.go.EvolveStart, json.dumps({**make_cfg(), "population": 3, "n": 10}))
    pack = ArrowPack([(f"x{j}", t) for j, t in enumerate(pop[:2])] + [("out", pop[2])])
    with pytest.raises(ValueError, match="2 buffers of 10 elements for a session of 3"):
        _core.call(_core.go.EvolveOffspring, state, 0, 2, pack.arrays, pack.schemas)
