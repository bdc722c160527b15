"""NeuroMerging's no-validation defaults (issue 12, part 3).

The automatic λ₂ = 1/(1 − max_t σ_t) (σ_t the L1 share of τ_t the trim
removes) restores the trimmed mass. With the authors' heavy trim (mask_rate
0.9, the default until issue 12) σ_t ≈ 0.65–0.8 and λ₂ = 3–5: on ``make
demo``'s model that threw the merge 15–18 points below TIES. A fixed λ₂ = 1
at that trim (tried first) is right here but 7 points below TIES on the
study's MiniLM fine-tunes, which need the trimmed mass back. The default is
now mask_rate 0.5 with the automatic λ₂ (1.3 on both): within a point of TIES
on both. These tests pin the behaviour on the demo's model and the λ₂ rule
on hand-made inputs.
"""

from __future__ import annotations

import functools

import npsfuse
import numpy as np
import pytest
import torch
from npsfuse.merging import METHOD_PARAMS
from torch import nn

DIM, HIDDEN, CLASSES = 32, 128, 4

#: How far (accuracy points) neuro may fall below TIES. Measured on this
#: setting, seeds 0–2, neuro − TIES: +0.4, +0.9, +0.5 with the defaults
#: (mask_rate 0.5, automatic λ₂ = 1.31–1.33); −15.6, −15.2, −16.4 with
#: mask_rate 0.9 and the automatic λ₂ (4.6–4.8), the default before issue 12.
TIES_MARGIN = 1.0


def _task(seed: int, n: int, draw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``make demo``'s synthetic task ``seed`` (labels from a linear teacher
    mixed with a shared one); ``draw`` picks an independent sample."""
    teacher = torch.randn(DIM, CLASSES, generator=torch.Generator().manual_seed(seed))
    shared = torch.randn(DIM, CLASSES, generator=torch.Generator().manual_seed(0))
    x = torch.randn(n, DIM, generator=torch.Generator().manual_seed(1000 * seed + draw))
    return x, (x @ (0.6 * shared + 0.4 * teacher)).argmax(1)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN), nn.GELU(),
                         nn.Linear(HIDDEN, CLASSES))


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
           gen: torch.Generator) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


@functools.cache
def _setting(seed: int) -> tuple[dict, list[dict], list[tuple[torch.Tensor, torch.Tensor]]]:
    """The demo's recipe: an MLP trained on task 0, fine-tuned on tasks 1–3
    (the whole model, shared head included, is merged); held-out test sets.
    Trained on one thread: several threads only contend on these tiny layers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_setting(seed)
    finally:
        torch.set_num_threads(threads)


def _train_setting(seed: int) -> tuple[dict, list[dict], list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    base = _model()
    _train(base, *_task(0, 2048, 0), steps=300, lr=3e-3, gen=gen)
    base_sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    fts = []
    for t in (1, 2, 3):
        m = _model()
        m.load_state_dict(base_sd)
        _train(m, *_task(t, 2048, 0), steps=200, lr=1e-3, gen=gen)
        fts.append({k: v.detach().clone() for k, v in m.state_dict().items()})
    return base_sd, fts, [_task(t, 2048, 7) for t in (1, 2, 3)]


@torch.no_grad()
def _accuracy(sd: dict, tests: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    m = _model()
    m.load_state_dict(sd)
    return 100 * float(np.mean([(m(x).argmax(1) == y).float().mean() for x, y in tests]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_defaults_competitive_on_demo_model(seed: int) -> None:
    """Defaults: within a point of TIES, above Task Arithmetic and the base."""
    base, fts, tests = _setting(seed)
    neuro = npsfuse.merge(base, fts, "neuro")
    acc = _accuracy(neuro, tests)
    pre = _accuracy(base, tests)
    ta = _accuracy(npsfuse.merge(base, fts, "task_arithmetic"), tests)
    ties = _accuracy(npsfuse.merge(base, fts, "ties"), tests)
    msg = f"neuro {acc:.1f}, TIES {ties:.1f}, TA {ta:.1f}, pre-trained {pre:.1f}, {neuro.report}"
    assert acc >= ties - TIES_MARGIN, msg
    assert acc >= ta, msg
    assert acc >= pre, msg


def test_default_is_half_trim_with_automatic_lam2() -> None:
    base, fts, _ = _setting(0)
    got = npsfuse.merge(base, fts, "neuro")
    assert METHOD_PARAMS["neuro"] == {"mask_rate": 0.5, "lam1": 0.0, "lam2": None}
    assert got.report["lam2_auto"] is True
    assert got.report["lam2"] == pytest.approx(1 / (1 - max(got.report["sigma"])), rel=1e-12)
    # Half the L1 mass or less is trimmed, so the rescale stays mild (1.31–1.33 here).
    assert 1 < got.report["lam2"] < 1.5
    same = npsfuse.merge(base, fts, "neuro", mask_rate=0.5, lam1=0.0, lam2=None, scope="global")
    assert all(torch.equal(got[k], same[k]) for k in got)
    # A fixed λ₂ stays available.
    fixed = npsfuse.merge(base, fts, "neuro", lam2=1.0)
    assert fixed.report["lam2"] == 1.0 and fixed.report["lam2_auto"] is False


def test_heavy_trim_with_automatic_lam2_overshoots_on_demo_model() -> None:
    # The default before issue 12 (mask_rate 0.9, automatic λ₂ = 4.6–4.8
    # here) fell 15–18 points below TIES on this model: it is kept reachable,
    # and this pins that it is not what the defaults do.
    base, fts, tests = _setting(0)
    old = npsfuse.merge(base, fts, "neuro", mask_rate=0.9)
    assert old.report["lam2"] > 4
    ties = _accuracy(npsfuse.merge(base, fts, "ties"), tests)
    assert _accuracy(old, tests) < ties - 10


def test_automatic_lam2_by_hand() -> None:
    # One 1-D tensor, mask_rate ½: model 0 keeps 4 and 3 of |τ|₁ = 10
    # (σ = 0.3), model 1 keeps 8 and the first 1 of 10 (σ = 0.1):
    # λ₂ = 1/(1 − 0.3); the result is λ₂ times the elementwise TIES
    # of τ̂₁ = [0, 0, 3, 4] and τ̂₂ = [8, 1, 0, 0].
    base = {"w": torch.zeros(4)}
    models = [{"w": torch.tensor([1.0, -2.0, 3.0, 4.0])},
              {"w": torch.tensor([8.0, 1.0, 0.0, -1.0])}]
    got = npsfuse.merge(base, models, "neuro", mask_rate=0.5, lam2=None)
    assert got.report["sigma"] == pytest.approx([0.3, 0.1], abs=1e-12)
    assert got.report["lam2"] == pytest.approx(1 / 0.7, rel=1e-12)
    np.testing.assert_allclose(got["w"].numpy(), np.array([8, 1, 3, 4]) / 0.7, rtol=1e-6)
    fixed = npsfuse.merge(base, models, "neuro", mask_rate=0.5, lam2=1.0)
    np.testing.assert_array_equal(fixed["w"].numpy(), [8, 1, 3, 4])


def test_automatic_lam2_on_gaussian_task_vectors() -> None:
    # What the old default did to dense task vectors: for N(0, 1) entries
    # the top 10 % by magnitude (|x| > z = 1.6449) carry E[|x|; |x| > z] /
    # E|x| = φ(z)/φ(0) = 0.2585 of the L1 mass, so 1/(1 − σ) = 3.87: the
    # merged τ is scaled almost fourfold, whatever the tasks.
    rng = np.random.default_rng(0)
    base = {"w": torch.zeros(300, 400)}
    models = [{"w": torch.from_numpy(rng.standard_normal((300, 400)).astype(np.float32))}
              for _ in range(3)]
    got = npsfuse.merge(base, models, "neuro", mask_rate=0.9, lam2=None)
    z = 1.6448536269514722
    want = np.exp(z * z / 2)  # φ(0)/φ(z)
    assert got.report["lam2"] == pytest.approx(want, rel=0.02)
