"""NPS-Pruning from Python: a small real task, the search API, resume, results.

The task: an MLP pre-trained to imitate one random teacher network on
Gaussian inputs (the "base"), then fine-tuned on a related teacher (the
"fine-tuned" model; the two label sets agree on about half the inputs).
Pruning the task vector to 5 % or 10 % loses much of the fine-tuning gain;
NPS must recover more of it on the validation split than magnitude top-k,
and the held-out split shows whether that generalises.
"""

from __future__ import annotations

import gc
import json
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import StateDict, make_family
from npsfuse import _core, nps
from torch import nn
from torch.func import functional_call

D_IN, HIDDEN, CLASSES = 20, 64, 10


def _teacher(g: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(D_IN, 32, generator=g) / D_IN**0.5,
            torch.randn(32, CLASSES, generator=g) / 32**0.5]


def _labels(t: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(x @ t[0]) @ t[1]).argmax(1)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN),
                         nn.ReLU(), nn.Linear(HIDDEN, CLASSES))


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
           seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        i = torch.randint(0, len(x), (128,), generator=g)
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()


class Task:
    """Base and fine-tuned state dicts and accuracy on the validation/held-out splits."""

    def __init__(self) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny matrices: one thread is fastest
        try:
            torch.manual_seed(0)
            g = torch.Generator().manual_seed(1)
            x = torch.randn(6000, D_IN, generator=g)
            a = _teacher(torch.Generator().manual_seed(10))
            b = [a[0] + 0.6 * torch.randn(a[0].shape, generator=g) / D_IN**0.5,
                 a[1] + 0.6 * torch.randn(a[1].shape, generator=g) / 32**0.5]
            ya, yb = _labels(a, x), _labels(b, x)
            model = _mlp()
            _train(model, x[:4000], ya[:4000], 800, 3e-3, 0)
            self.base = {k: v.detach().clone() for k, v in model.state_dict().items()}
            _train(model, x[:2000], yb[:2000], 400, 2e-3, 1)
            self.finetuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
        finally:
            torch.set_num_threads(threads)
        self.val = (x[4000:5000], yb[4000:5000])
        self.test = (x[5000:], yb[5000:])
        self._module = _mlp()

    def accuracy(self, sd: StateDict, split: tuple[torch.Tensor, torch.Tensor]) -> float:
        with torch.no_grad():
            out = functional_call(self._module, sd, (split[0],))
        return float((out.argmax(1) == split[1]).float().mean())

    def validate(self, sd: StateDict) -> float:
        return self.accuracy(sd, self.val)

    def magnitude_topk(self, keep: float) -> StateDict:
        """θ₀ + global magnitude top-k of τ, computed independently in torch."""
        tau = {k: self.finetuned[k] - self.base[k] for k in self.base}
        flat = torch.cat([t.reshape(-1) for t in tau.values()])
        k = int(keep * flat.numel())
        idx = flat.abs().topk(k).indices
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        mask[idx] = True
        out, off = {}, 0
        for name, t in tau.items():
            m = mask[off:off + t.numel()].reshape(t.shape)
            off += t.numel()
            out[name] = self.base[name] + torch.where(m, t, torch.zeros(()))
        return out


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The models here are tiny: one torch thread is fastest, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task() -> Task:
    return Task()


def _counting(fn: Callable[[StateDict], float]) -> tuple[Callable[[StateDict], float], list]:
    calls: list[int] = []

    def wrapped(sd: StateDict) -> float:
        calls.append(1)
        return fn(sd)

    return wrapped, calls


# ------------------------------------------------------------- the real task --


def test_fine_tuning_matters(task: Task) -> None:
    """Sanity: the task is one the pruning can lose (else the comparison is empty)."""
    base, ft = task.validate(task.base), task.validate(task.finetuned)
    assert ft > base + 0.15
    assert task.validate(task.magnitude_topk(0.05)) < ft - 0.1


def test_start_point_is_magnitude_topk(task: Task) -> None:
    with nps.Search(task.base, task.finetuned, density=0.05, seed=0) as s:
        np.testing.assert_array_equal(s.candidates(), np.ones((1, 8)))
        (start,) = s.ask()
        want = task.magnitude_topk(0.05)
        for k in want:
            assert torch.equal(start[k], want[k]), k
        s.tell([task.validate(start)])
        res = s.result()
    n = sum(t.numel() for t in task.base.values())
    assert res.kept == int(0.05 * n)
    assert sum(int((t != 0).sum()) for t in res.task_vector().values()) == res.kept


@pytest.mark.parametrize("keep", [0.05, 0.1])
def test_nps_beats_magnitude_topk(task: Task, keep: float, capsys: pytest.CaptureFixture,
                                  record_property: Callable) -> None:
    evaluate, calls = _counting(task.validate)
    res = nps.prune(task.base, task.finetuned, evaluate, density=keep, generations=25, seed=0,
                    progress=False)
    popsize = 4 + int(3 * math.log(8))
    assert len(calls) == 1 + 25 * popsize == res.evaluations
    mag = task.magnitude_topk(keep)
    assert res.start_score == task.validate(mag)  # the search starts at magnitude top-k
    assert res.score >= res.start_score  # ... so it can never end below it
    assert res.score > res.start_score + 0.02  # and here it finds clearly better weights
    assert res.score == task.validate(res.state_dict())  # the result is what was scored
    held_nps, held_mag = task.accuracy(res.state_dict(), task.test), task.accuracy(mag, task.test)
    ft = task.accuracy(task.finetuned, task.test)
    line = (f"keep={keep}: held-out accuracy NPS {held_nps:.3f}, magnitude top-k "
            f"{held_mag:.3f}, full fine-tune {ft:.3f} (validation {res.score:.3f} vs "
            f"{res.start_score:.3f}); weights {np.round(res.weights, 2).tolist()}")
    record_property(f"held_out_keep_{keep}", line)
    with capsys.disabled():
        print("\n" + line)
    assert held_nps >= held_mag
    assert len(res.history) == 25
    assert [h["generation"] for h in res.history] == list(range(1, 26))
    best = [h["best_so_far"] for h in res.history]
    assert best == sorted(best) and best[-1] == res.score


def test_per_layer_and_de(task: Task) -> None:
    evaluate, calls = _counting(task.validate)
    res = nps.prune(task.base, task.finetuned, evaluate, density=0.05, subspaces=4,
                    per_layer=True, optimizer="de", popsize=8, generations=6, seed=1,
                    progress=False)
    assert res.weights.shape == (len(task.base), 4)
    assert len(calls) == 1 + 6 * 8
    assert np.asarray(res.history[0]["weights"]).shape == (len(task.base), 4)
    assert res.score >= res.start_score
    assert np.all((res.weights >= 0) & (res.weights <= 2))


def test_magnitude_kind_and_tensor_scope(task: Task) -> None:
    res = nps.prune(task.base, task.finetuned, task.validate, density=0.1, kind="magnitude",
                    scope="tensor", generations=2, seed=0, progress=False)
    for k, t in res.task_vector().items():
        assert int((t != 0).sum()) == int(0.1 * t.numel()), k


@pytest.mark.parametrize("subspaces,kind", [(1, "svd"), (2, "svd"), (3, "magnitude")])
def test_few_subspaces(subspaces: int, kind: str) -> None:
    base, (ft,) = make_family({"w": (12, 9), "b": (9,)}, n_models=1, seed=8)
    res = nps.prune(base, ft, lambda sd: -float((sd["w"] - ft["w"]).abs().sum()), density=0.5,
                    subspaces=subspaces, kind=kind, generations=3, progress=False)
    assert res.weights.shape == (subspaces,)
    assert res.kept == int(0.5 * (12 * 9 + 9))
    if subspaces == 1:  # one weight scales the whole τ: the mask stays magnitude top-k
        with nps.Search(base, ft, density=0.5, subspaces=1) as s:
            start = s.build(np.ones(1))
        for k, t in res.task_vector().items():
            top = start[k] - base[k]
            assert torch.equal(t != 0, top != 0), k
            torch.testing.assert_close(t, top * float(res.weights[0]), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------ resume / state --


class _Stop(KeyboardInterrupt):
    """Ctrl-C (evaluate's exceptions are scored -inf; an interrupt stops the search)."""


def test_prune_checkpoint_continues_to_the_uninterrupted_result(task: Task, tmp_path) -> None:
    """prune(checkpoint=) saves every generation; a second call continues from
    the file (evaluating only what is left) to the uninterrupted result."""
    kw = dict(density=0.05, subspaces=4, optimizer="de", generations=5, popsize=4, seed=3)
    full = nps.prune(task.base, task.finetuned, task.validate, progress=False, **kw)
    calls = [0]

    def flaky(sd: StateDict) -> float:
        calls[0] += 1
        if calls[0] == 12:  # inside the third generation
            raise _Stop
        return task.validate(sd)

    ck = tmp_path / "prune.json"
    with pytest.raises(_Stop):
        nps.prune(task.base, task.finetuned, flaky, progress=False, checkpoint=ck, **kw)
    evaluate, seen = _counting(task.validate)
    res = nps.prune(task.base, task.finetuned, evaluate, progress=False, checkpoint=ck, **kw)
    assert 0 < len(seen) < full.evaluations
    np.testing.assert_array_equal(res.weights, full.weights)
    assert res.score == full.score and res.history == full.history
    with pytest.raises(ValueError, match="other values of density"):
        nps.prune(task.base, task.finetuned, evaluate, progress=False, checkpoint=ck,
                  **{**kw, "density": 0.1})


@pytest.mark.parametrize("optimizer", ["cma", "de"])
def test_resume_gives_the_uninterrupted_result(task: Task, optimizer: str) -> None:
    kw = dict(density=0.05, subspaces=6, optimizer=optimizer, generations=8, popsize=6, seed=7)
    full = nps.prune(task.base, task.finetuned, task.validate, progress=False, **kw)

    s = nps.Search(task.base, task.finetuned, **kw)
    s.tell([task.validate(sd) for sd in s.ask()])
    for _ in range(3):
        s.tell([task.validate(sd) for sd in s.ask()])
    s.ask()  # killed between ask and tell
    saved = json.dumps(s.state())
    s.close()
    del s

    r = nps.Search.resume(saved, task.base, task.finetuned)
    assert r.generation == 3
    while not r.done:
        r.tell([task.validate(sd) for sd in r.ask()])
    res = r.result()
    r.close()
    np.testing.assert_array_equal(res.weights, full.weights)
    assert res.score == full.score and res.start_score == full.start_score
    assert res.history == full.history
    for k in full.tensor_names:
        assert torch.equal(res.task_vector()[k], full.task_vector()[k])


def test_resume_before_the_start_was_told(task: Task) -> None:
    s = nps.Search(task.base, task.finetuned, density=0.1, generations=1, seed=2)
    (start,) = s.ask()
    r = nps.Search.resume(s.state(), task.base, task.finetuned)
    (again,) = r.ask()
    assert all(torch.equal(start[k], again[k]) for k in start)
    r.tell([task.validate(again)])
    assert r.generation == 0 and not r.done


def test_resume_with_other_models_is_refused(task: Task) -> None:
    s = nps.Search(task.base, task.finetuned, density=0.1, generations=1, seed=2)
    state = s.state()
    other = {k: v + 0.01 for k, v in task.finetuned.items()}
    with pytest.raises(ValueError, match="finetuned model.*differ"):
        nps.Search.resume(state, task.base, other)
    with pytest.raises(ValueError, match="not a saved NPS search"):
        nps.Search.resume({"format": "x"}, task.base, task.finetuned)


def test_tell_protocol(task: Task) -> None:
    with nps.Search(task.base, task.finetuned, density=0.1, popsize=4, seed=0) as s:
        with pytest.raises(RuntimeError, match="call ask"):
            s.tell([1.0])
        s.ask()
        with pytest.raises(ValueError, match="2 scores for 1 candidates"):
            s.tell([1.0, 2.0])
        s.tell([0.5])
        assert len(s.ask()) == 4
        with pytest.warns(RuntimeWarning, match="nan"):
            s.tell([float("nan"), None, 0.1, 0.2])
        assert s.history[0]["failed"] == 2
        w, f = s.best
        assert f == 0.5 and np.array_equal(w, np.ones(8))  # ties and worse keep the start
    with pytest.raises(ValueError, match="closed"):
        s.ask()


# ------------------------------------------------------------- bad input ----


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"density": 0.0}, "density must lie in"),
        ({"density": 1.5}, "density must lie in"),
        ({"density": float("nan")}, "density must lie in"),
        ({"subspaces": 0}, "subspaces"),
        ({"subspaces": 2.5}, "subspaces"),
        ({"bounds": (2.0, 0.0)}, "inverted"),
        ({"bounds": (1.0, 1.0)}, "inverted"),
        ({"bounds": (0.0, float("inf"))}, "finite"),
        ({"kind": "fft"}, "kind"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"scope": "row"}, "scope"),
        ({"generations": -1}, "generations"),
        ({"popsize": 1}, "popsize"),
        ({"optimizer_options": {"seed": 3}}, "unknown optimizer option"),
        ({"optimizer_options": {"sigma0": -1.0}}, "sigma0"),
    ],
)
def test_bad_arguments(kw: dict, match: str) -> None:
    base, (ft,) = make_family({"w": (8, 6), "b": (6,)}, n_models=1, seed=3)
    with pytest.raises(ValueError, match=match):
        nps.prune(base, ft, lambda sd: 0.0, progress=False, **kw)


def test_mismatched_models() -> None:
    base, (ft,) = make_family({"w": (8, 6)}, n_models=1, seed=3)
    with pytest.raises(ValueError, match="shape"):
        nps.prune(base, {"w": torch.zeros(6, 8)}, lambda sd: 0.0, progress=False)
    with pytest.raises(ValueError, match="missing"):
        nps.prune(base, {}, lambda sd: 0.0, progress=False)
    with pytest.raises(ValueError, match="no non-empty floating-point"):
        nps.prune({"i": torch.arange(3)}, {"i": torch.arange(3)}, lambda sd: 0.0)


def test_failed_scores_are_minus_inf_and_warned_once_and_errors_raise() -> None:
    """The policy of every search (npsfuse._vocab): NaN/±inf marks a failed
    candidate (−inf, one RuntimeWarning), an exception reaches the caller."""
    base, (ft,) = make_family({"w": (8, 6), "b": (6,)}, n_models=1, seed=4)
    n = [0]

    def flaky(sd: StateDict) -> float:
        n[0] += 1
        if n[0] % 3 == 0:
            return float("inf")
        if n[0] % 3 == 1 and n[0] > 1:
            return float("nan")
        return float(-((sd["w"] - ft["w"]) ** 2).sum())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = nps.prune(base, ft, flaky, density=0.3, generations=5, popsize=4, progress=False)
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert all(w.filename == __file__ for w in ours)  # points at the caller, not npsfuse
    msgs = [str(w.message) for w in ours]
    assert len([m for m in msgs if "candidate failed" in m]) == 1
    assert res.failures == sum(h["failed"] for h in res.history) > 0
    assert math.isfinite(res.score)

    def broken(sd: StateDict) -> float:
        raise RuntimeError("GPU fell over")

    with pytest.raises(RuntimeError, match="GPU fell over"):
        nps.prune(base, ft, broken, density=0.3, generations=5, popsize=4, progress=False)


def test_every_evaluation_failing_is_an_error() -> None:
    base, (ft,) = make_family({"w": (8, 6)}, n_models=1, seed=4)

    with pytest.warns(RuntimeWarning, match="nan"), \
            pytest.raises(RuntimeError, match="no candidate has a finite score"):
        nps.prune(base, ft, lambda sd: float("nan"), generations=2, popsize=3, progress=False)


# --------------------------------------------------------- results and uses --


@pytest.fixture(scope="module")
def small_result() -> tuple[StateDict, StateDict, nps.NPSResult]:
    base, (ft,) = make_family(n_models=1, seed=5, buffers=True)
    target = ft["embed.weight"]

    def score(sd: StateDict) -> float:
        return -float(((sd["embed.weight"] - target) ** 2).sum())

    res = nps.prune(base, ft, score, density=0.1, generations=4, seed=0, progress=False)
    return base, ft, res


def test_transfer_is_base_plus_lambda_tau(small_result: tuple) -> None:
    base, _, res = small_result
    tau = res.task_vector()
    got = nps.transfer(base, res, lam=0.5)
    assert list(got) == list(base)
    for k, b in base.items():
        if k in tau:
            assert torch.equal(got[k], b + 0.5 * tau[k]), k
        else:
            assert got[k] is b  # integer buffers are the base's own
    assert set(res.tensor_names) == {k for k, t in base.items() if t.is_floating_point()}


def test_save_load_round_trip(small_result: tuple, tmp_path: Path) -> None:
    base, _, res = small_result
    path = res.save(tmp_path / "task.nps.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["task.nps.safetensors"]  # no temp left
    back = nps.NPSResult.load(path)
    np.testing.assert_array_equal(back.weights, res.weights)
    assert back.history == res.history and back.score == res.score
    assert back.density == res.density and back.kept == res.kept and back.config == res.config
    for k, t in res.task_vector().items():
        assert torch.equal(back.task_vector()[k], t)
    with pytest.raises(ValueError, match="pass base"):
        back.state_dict()
    a, b = back.state_dict(base=base), res.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert all(torch.equal(x, y) for x, y in zip(nps.transfer(base, path).values(),
                                                 b.values(), strict=True))
    other = {k: (v + 1 if v.is_floating_point() else v) for k, v in base.items()}
    with pytest.raises(ValueError, match="not the one the result was computed from"):
        back.state_dict(base=other)
    with pytest.raises(ValueError, match="not an npsfuse NPS result"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
        nps.NPSResult.load(tmp_path / "plain.safetensors")


def test_plot_writes_a_png(small_result: tuple, tmp_path: Path) -> None:
    _, _, res = small_result
    res.plot(tmp_path / "nps.png")
    assert (tmp_path / "nps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fuse(small_result: tuple) -> None:
    base, ft, res = small_result
    other = {k: torch.randn(base[k].shape) * 0.01 for k in ("layer.0.weight", "layer.1.weight")}
    fixed = nps.fuse(base, [res, other], lambdas=[0.5, 2.0])
    sd = fixed.state_dict()
    tau = res.task_vector()
    for k in tau:
        want = base[k] + 0.5 * tau[k]
        if k in other:
            want = want + 2.0 * other[k]
        torch.testing.assert_close(sd[k], want, rtol=0, atol=1e-6)
    assert fixed.score is None

    target = ft["layer.1.weight"]

    def score(sd: StateDict) -> float:
        return -float(((sd["layer.1.weight"] - target) ** 2).sum())

    evaluate, calls = _counting(score)
    found = nps.fuse(base, [res, other], evaluate, generations=10, popsize=5, seed=1,
                     progress=False)
    assert len(calls) == 1 + 10 * 5
    assert found.lambdas.shape == (2,)
    assert found.score >= found.start_score
    assert found.score == score(found.state_dict())
    with pytest.raises(ValueError, match="3 lambdas given for 2 results"):
        nps.fuse(base, [res, other], lambdas=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="not the one"):
        nps.fuse({k: (v + 1 if v.is_floating_point() else v) for k, v in base.items()}, [res])


def test_fuse_checkpoint_continues(small_result: tuple, tmp_path: Path) -> None:
    base, ft, res = small_result
    other = {k: torch.randn(base[k].shape, generator=torch.Generator().manual_seed(5)) * 0.01
             for k in ("layer.0.weight", "layer.1.weight")}
    target = ft["layer.1.weight"]

    def score(sd: StateDict) -> float:
        return -float(((sd["layer.1.weight"] - target) ** 2).sum())

    kw = dict(generations=6, popsize=5, seed=2, progress=False)
    full = nps.fuse(base, [res, other], score, **kw)
    calls = [0]

    def flaky(sd: StateDict) -> float:
        calls[0] += 1
        if calls[0] == 14:  # inside the third generation
            raise _Stop
        return score(sd)

    ck = tmp_path / "fuse.json"
    with pytest.raises(_Stop):
        nps.fuse(base, [res, other], flaky, checkpoint=ck, **kw)
    evaluate, seen = _counting(score)
    got = nps.fuse(base, [res, other], evaluate, checkpoint=ck, **kw)
    assert len(seen) == 4 * 5  # generations 3..6 only
    np.testing.assert_array_equal(got.lambdas, full.lambdas)
    assert got.score == full.score and got.history == full.history
    with pytest.raises(ValueError, match="other seed"):
        nps.fuse(base, [res, other], score, checkpoint=ck, **{**kw, "seed": 3})


def test_bfloat16_model() -> None:
    base, (ft,) = make_family({"w": (40, 30), "b": (30,)}, n_models=1, seed=6,
                              dtype=torch.bfloat16)
    res = nps.prune(base, ft, lambda sd: -float((sd["w"].float() - ft["w"].float()).abs().sum()),
                    density=0.2, subspaces=4, generations=3, progress=False)
    assert all(t.dtype == torch.bfloat16 for t in res.task_vector().values())
    sd = res.state_dict()
    assert all(t.dtype == torch.bfloat16 for t in sd.values())


def test_go_handles_are_freed(small_result: tuple) -> None:
    base, ft, _ = small_result
    gc.collect()
    before = _core.go.NumHandlesLive()
    nps.prune(base, ft, lambda sd: 0.0, generations=1, progress=False)
    s = nps.Search(base, ft)
    assert _core.go.NumHandlesLive() == before + 2  # decomposition + optimizer
    del s
    gc.collect()
    assert _core.go.NumHandlesLive() == before
