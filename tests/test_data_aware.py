"""The data-aware merges: ``npsfuse.stats``, ``fisher``, ``regmean`` and ``adamerging``.

Each method is checked against the NumPy reference (``npsfuse.reference``)
or an independent PyTorch loop on a tiny MLP (two Linear layers with biases
and a LayerNorm); the statistics helpers against closed forms; RegMean
against its defining least-squares property; the YAML path against the
Python path, bit for bit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import npsfuse
import numpy as np
import pytest
import reference as ref
import torch
from conftest import StateDict, to_numpy
from safetensors.torch import save_file
from torch import nn

IN, HID, OUT = 6, 8, 3


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    """The models are tiny: one torch thread is faster on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(IN, HID), nn.LayerNorm(HID), nn.ReLU(), nn.Linear(HID, OUT))


def family(n_models: int = 3, seed: int = 0) -> tuple[StateDict, list[StateDict]]:
    """A base MLP and ``n_models`` perturbed fine-tunes of it (state dicts)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    base = {k: v.detach().clone() for k, v in mlp().state_dict().items()}
    models = [
        {k: v + 0.2 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        for _ in range(n_models)
    ]
    return base, models


def batches(n: int = 3, size: int = 16, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, IN, generator=g) for _ in range(n)]


def module_with(sd: StateDict) -> nn.Module:
    m = mlp()
    m.load_state_dict(sd)
    return m


def assert_equal(got: StateDict, want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for k, w in want.items():
        assert np.array_equal(got[k].numpy(), w), f"{k}: max |Δ| {np.abs(got[k].numpy() - w).max()}"


def assert_close(got: StateDict, want: dict[str, np.ndarray], atol: float) -> None:
    assert list(got) == list(want)
    for k, w in want.items():
        d = np.abs(got[k].numpy() - w).max()
        assert d <= atol, f"{k}: max |Δ| {d:.3g}"


# ----------------------------------------------------------------- stats


def _softmax_regression(seed: int = 0) -> tuple[nn.Linear, list[torch.Tensor]]:
    torch.manual_seed(seed)
    lin = nn.Linear(4, 3)
    g = torch.Generator().manual_seed(seed + 1)
    return lin, [torch.randn(7, 4, generator=g) for _ in range(3)]


def test_fisher_exact_closed_form() -> None:
    # Softmax regression: ∂ log p_y / ∂W_ij = (1[i=y] − p_i)·x_j, so the
    # expectation over y ~ p is p_i(1 − p_i)·x_j² (bias: p_i(1 − p_i)).
    lin, xs = _softmax_regression()
    got = npsfuse.stats.fisher(lin, xs, exact=True)
    x = torch.cat(xs).double()
    p = torch.softmax(x @ lin.weight.double().T + lin.bias.double(), -1)
    v = p * (1 - p)
    torch.testing.assert_close(got["weight"].double(), (v.T @ x.square()) / len(x),
                               rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got["bias"].double(), v.mean(0), rtol=1e-5, atol=1e-7)
    assert list(got) == ["weight", "bias"] and got["weight"].dtype == torch.float32


def test_fisher_sampled_closed_form_and_seed() -> None:
    # The labels are torch.multinomial draws from softmax(logits), batch by
    # batch, with a generator seeded by `seed`.
    lin, xs = _softmax_regression()
    got = npsfuse.stats.fisher(lin, xs, seed=5, max_batches=2)
    g = torch.Generator().manual_seed(5)
    want_w = torch.zeros(3, 4, dtype=torch.float64)
    want_b = torch.zeros(3, dtype=torch.float64)
    n = 0
    for x in xs[:2]:
        with torch.no_grad():
            logits = lin(x)
        p = torch.softmax(logits.float(), -1).double()
        y = torch.multinomial(p, 1, generator=g).squeeze(1)
        r = torch.nn.functional.one_hot(y, 3).double() - p  # ∂ log p_y / ∂ logits
        want_w += r.square().T @ x.double().square()
        want_b += r.square().sum(0)
        n += len(x)
    torch.testing.assert_close(got["weight"].double(), want_w / n, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got["bias"].double(), want_b / n, rtol=1e-5, atol=1e-7)
    again = npsfuse.stats.fisher(lin, xs, seed=5, max_batches=2)
    other = npsfuse.stats.fisher(lin, xs, seed=6, max_batches=2)
    assert torch.equal(again["weight"], got["weight"])
    assert not torch.equal(other["weight"], got["weight"])


def test_fisher_params_and_loop_fallback() -> None:
    base, models = family(1)
    xs = batches()
    own = npsfuse.stats.fisher(module_with(models[0]), xs, seed=3)
    swapped = npsfuse.stats.fisher(module_with(base), xs, params=models[0], seed=3)
    for k in own:
        torch.testing.assert_close(swapped[k], own[k], rtol=1e-6, atol=1e-9)

    def unvectorisable(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        if float(batch.sum()) > 1e9:  # .item() on a vmapped tensor fails
            raise AssertionError
        return module(batch)

    with pytest.warns(RuntimeWarning, match="one example at a time"):
        looped = npsfuse.stats.fisher(module_with(models[0]), xs, forward=unvectorisable, seed=3)
    for k in own:
        torch.testing.assert_close(looped[k], own[k], rtol=1e-5, atol=1e-9)


def test_fisher_dict_batches_and_chunks() -> None:
    class Keyed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.net(x) * scale

    torch.manual_seed(0)
    m = Keyed()
    xs = batches()
    # `scale` has no batch dimension: it is shared by every example.
    dicts = [{"x": x, "scale": torch.tensor(2.0)} for x in xs]
    whole = npsfuse.stats.fisher(m, dicts, exact=True)
    chunked = npsfuse.stats.fisher(m, dicts, exact=True, chunk_size=5)
    plain = npsfuse.stats.fisher(m.net, xs, exact=True, forward=lambda mod, b: mod(b) * 2)
    assert list(whole) == [f"net.{k}" for k in plain]
    for k, v in plain.items():
        torch.testing.assert_close(whole[f"net.{k}"], v, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(chunked[f"net.{k}"], v, rtol=1e-5, atol=1e-9)


def test_fisher_of_tied_weights_uses_the_total_gradient() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(5, 4)
            self.head = nn.Linear(4, 5, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.emb(ids).mean(1))

    torch.manual_seed(0)
    m = Tied()
    ids = [torch.randint(0, 5, (4, 3), generator=torch.Generator().manual_seed(i))
           for i in range(2)]
    got = npsfuse.stats.fisher(m, ids, exact=True)
    assert list(got) == ["emb.weight", "head.weight"]
    want = torch.zeros(5, 4, dtype=torch.float64)
    for x in torch.cat(ids).split(1):  # plain autograd, one example and class at a time
        p = torch.softmax(m(x), -1)[0].detach()
        for c in range(5):
            m.zero_grad()
            torch.log_softmax(m(x), -1)[0, c].backward()
            want += p[c].double() * m.emb.weight.grad.double().square()
    torch.testing.assert_close(got["emb.weight"].double(), want / 8, rtol=1e-5, atol=1e-8)
    assert torch.equal(got["head.weight"], got["emb.weight"])


def test_fisher_of_a_batchnorm_model() -> None:
    """BatchNorm's running statistics are buffers torch cannot differentiate
    batch_norm by: they get a zero Fisher (the parameters' Fisher is that of the
    model with them as constants), and a Fisher merge averages them with the
    models' weights through the floor."""

    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 6 * 6, 5))

    torch.manual_seed(0)
    m = net()
    m[1].running_mean.uniform_(-1, 1)
    m[1].running_var.uniform_(0.5, 2)
    xs = [torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    got = npsfuse.stats.fisher(m, xs, exact=True)
    floats = [k for k, v in m.state_dict().items() if v.is_floating_point()]
    assert list(got) == floats
    for k in ("1.running_mean", "1.running_var"):
        assert torch.equal(got[k], torch.zeros(4))
    want = torch.zeros(5, 144, dtype=torch.float64)  # plain autograd, eval mode
    m.eval()
    for x in torch.cat(xs).split(1):
        p = torch.softmax(m(x), -1)[0].detach()
        for c in range(5):
            m.zero_grad()
            torch.log_softmax(m(x), -1)[0, c].backward()
            want += p[c].double() * m[4].weight.grad.double().square()
    torch.testing.assert_close(got["4.weight"].double(), want / 12, rtol=1e-5, atol=1e-9)
    assert got["1.weight"].abs().sum() > 0
    # two fine-tunes merged by Fisher: the running statistics are their mean
    base = {k: v.clone() for k, v in m.state_dict().items()}
    fts = []
    for i in range(2):
        ft = {k: v + 0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(9 + i))
              if v.is_floating_point() else v.clone() for k, v in base.items()}
        fts.append(ft)
    stats = [npsfuse.stats.fisher(m, xs, params=ft, exact=True) for ft in fts]
    merged = npsfuse.merge(base, fts, "fisher", statistics=stats)
    for k in ("1.running_mean", "1.running_var"):
        torch.testing.assert_close(merged[k], (fts[0][k] + fts[1][k]) / 2)


def test_regmean_grams_hand_computed() -> None:
    base, _ = family(1)
    m = module_with(base)
    xs = batches()
    grams = npsfuse.stats.regmean_grams(m, xs, max_batches=2)
    x = torch.cat(xs[:2]).double()
    torch.testing.assert_close(grams["0.weight"].double(), x.T @ x / len(x), rtol=1e-6,
                               atol=1e-7)
    with torch.no_grad():
        h = torch.relu(m[1](m[0](torch.cat(xs[:2])))).double()
    torch.testing.assert_close(grams["3.weight"].double(), h.T @ h / len(h), rtol=1e-5,
                               atol=1e-6)
    assert list(grams) == ["0.weight", "3.weight"]
    assert all(torch.equal(g, g.T) for g in grams.values())


def test_regmean_grams_count_tokens_and_params() -> None:
    base, models = family(1)
    seq = [torch.randn(2, 5, IN, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    grams = npsfuse.stats.regmean_grams(module_with(base), seq)
    x = torch.cat([s.reshape(-1, IN) for s in seq]).double()  # every token is a row
    torch.testing.assert_close(grams["0.weight"].double(), x.T @ x / 20, rtol=1e-6, atol=1e-7)
    own = npsfuse.stats.regmean_grams(module_with(models[0]), seq)
    swapped = npsfuse.stats.regmean_grams(module_with(base), seq, params=models[0])
    for k in own:
        torch.testing.assert_close(swapped[k], own[k], rtol=1e-6, atol=1e-7)


def test_stats_leave_the_module_as_it_was() -> None:
    m = mlp()
    m.train()
    m[1].eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    npsfuse.stats.fisher(m, batches(1))
    npsfuse.stats.regmean_grams(m, batches(1))
    assert m.training and not m[1].training and m[0].training
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert all(not h for mod in m.modules() for h in (mod._forward_pre_hooks,))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: npsfuse.stats.fisher(mlp(), []), "no batches"),
        (lambda: npsfuse.stats.fisher(mlp(), batches(1), forward=lambda m, b: m(b)[0]),
         r"logits of shape \(N, C\)"),
        (lambda: npsfuse.stats.fisher(mlp(), batches(1), params={"nope": torch.zeros(1)}),
         "'nope'"),
        (lambda: npsfuse.stats.fisher(mlp(), batches(1), params={"0.bias": torch.zeros(3)}),
         r"shape \(3,\)"),
        (lambda: npsfuse.stats.regmean_grams(nn.ReLU(), batches(1)), "no nn.Linear"),
        (lambda: npsfuse.stats.regmean_grams(mlp(), []), "no linear layer ran"),
    ],
)
def test_stats_errors(call: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_save_load_roundtrip(tmp_path: Path) -> None:
    base, _ = family(1)
    stats = npsfuse.stats.fisher(module_with(base), batches())
    stats["half"] = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    stats["alias"] = stats["0.weight"]  # shares memory: still saved
    path = npsfuse.stats.save(stats, tmp_path / "f.safetensors", metadata={"task": "a"})
    back = npsfuse.stats.load(path)
    assert set(back) == set(stats)
    for k, v in stats.items():
        assert back[k].dtype == torch.float32
        assert torch.equal(back[k], v.float())
    assert [p.name for p in tmp_path.iterdir()] == ["f.safetensors"]  # no temporary left
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"npsfuse": "statistics", "task": "a"}
    # A failed write leaves the old file as it was.
    with pytest.raises(ValueError, match="not a tensor"):
        npsfuse.stats.save({"x": [1.0]}, path)  # type: ignore[dict-item]
    assert torch.equal(npsfuse.stats.load(path)["0.weight"], stats["0.weight"])


# ---------------------------------------------------------------- fisher


@pytest.mark.parametrize(
    "kw",
    [{}, {"weights": [0.5, 2.0, 1.0], "lam": 0.7}, {"fisher_floor": 1e-2, "lam": 1.3}],
    ids=["plain", "weights-lam", "floor"],
)
def test_fisher_matches_reference(kw: dict[str, Any]) -> None:
    base, models = family()
    xs = batches()
    fishers = [npsfuse.stats.fisher(module_with(sd), xs, seed=i) for i, sd in enumerate(models)]
    for f in fishers:
        del f["1.bias"]  # merged as the weighted mean
        f["0.weight"][0, :2] = 0.0  # untouched entries fall back to the mean
    got = npsfuse.merge(base, models, "fisher", statistics=fishers, **kw)
    want = ref.fisher_merge(to_numpy(base), [to_numpy(sd) for sd in models],
                            [to_numpy(f) for f in fishers],
                            weights=kw.get("weights"), fisher_floor=kw.get("fisher_floor", 1e-6),
                            lam=kw.get("lam", 1.0))
    assert_equal(got, want)
    assert got.report["plain_average"] == {"1.bias": True}


def test_fisher_is_the_papers_formula() -> None:
    # λ = 1: θ* = Σ w F̃ θ / Σ w F̃ (the paper's form), up to float32 rounding.
    base, models = family()
    fishers = [{k: torch.rand(v.shape, generator=torch.Generator().manual_seed(i)) for k, v in
                base.items()} for i in range(3)]
    w = [1.0, 2.0, 0.5]
    got = npsfuse.merge(base, models, "fisher", statistics=fishers, weights=w)
    for k in base:
        fs = [torch.clamp(f[k], min=1e-6) for f in fishers]
        num = sum(wt * f * sd[k] for wt, f, sd in zip(w, fs, models, strict=True))
        den = sum(wt * f for wt, f in zip(w, fs, strict=True))
        torch.testing.assert_close(got[k], num / den, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- regmean


@pytest.mark.parametrize("kw", [{}, {"alpha": 0.5, "weights": [1.0, 3.0, 0.5], "lam": 0.8}],
                         ids=["default", "alpha-weights-lam"])
def test_regmean_matches_reference(kw: dict[str, Any]) -> None:
    base, models = family()
    xs = batches()
    grams = [npsfuse.stats.regmean_grams(module_with(sd), xs) for sd in models]
    got = npsfuse.merge(base, models, "regmean", statistics=grams, **kw)
    want = ref.regmean_merge(to_numpy(base), [to_numpy(sd) for sd in models],
                             [to_numpy(g) for g in grams], weights=kw.get("weights"),
                             alpha=kw.get("alpha", 0.9), lam=kw.get("lam", 1.0))
    assert_close(got, want, atol=2e-6)
    for k in ("0.bias", "1.weight", "1.bias", "3.bias"):  # the weighted mean, exactly
        assert np.array_equal(got[k].numpy(), want[k]), k
    assert got.report["plain_average"] == dict.fromkeys(("0.bias", "1.bias", "1.weight",
                                                         "3.bias"), True)


def test_regmean_conv1d_layout() -> None:
    # GPT-2's Conv1D stores W as (in, out): flagged transposed (square) or
    # recognised from the Gram's side (not square), the merge is the
    # transpose of the (out, in) one.
    base, models = family()
    grams = [npsfuse.stats.regmean_grams(module_with(sd), batches()) for sd in models]
    plain = npsfuse.merge(base, models, "regmean", statistics=grams)
    t_base = {k: v.T.contiguous() if k.endswith("weight") and v.dim() == 2 else v
              for k, v in base.items()}
    t_models = [{k: v.T.contiguous() if k.endswith("weight") and v.dim() == 2 else v
                 for k, v in sd.items()} for sd in models]
    conv = npsfuse.merge(t_base, t_models, "regmean", statistics=grams)
    for k in ("0.weight", "3.weight"):
        assert torch.equal(conv[k].T, plain[k]), k
    # A square weight needs the flag.
    sq_base = {"c_proj.weight": torch.randn(5, 5)}
    sq_models = [{"c_proj.weight": torch.randn(5, 5)} for _ in range(2)]
    sq_grams = [{"c_proj.weight": (lambda x: x.T @ x / 9)(torch.randn(9, 5))} for _ in range(2)]
    a = npsfuse.merge(sq_base, sq_models, "regmean", statistics=sq_grams)
    b = npsfuse.merge({k: v.T.contiguous() for k, v in sq_base.items()},
                      [{k: v.T.contiguous() for k, v in sd.items()} for sd in sq_models],
                      "regmean", statistics=sq_grams, transposed=["c_proj.weight"])
    torch.testing.assert_close(b["c_proj.weight"].T, a["c_proj.weight"], rtol=0, atol=0)
    want = ref.regmean_merge(to_numpy(sq_base), [to_numpy(sd) for sd in sq_models],
                             [to_numpy(g) for g in sq_grams])
    assert_close(a, want, atol=2e-6)


def test_regmean_one_model_and_equal_grams() -> None:
    base, models = family()
    grams = [npsfuse.stats.regmean_grams(module_with(sd), batches()) for sd in models]
    one = npsfuse.merge(base, models[:1], "regmean", statistics=grams[:1])
    for k in ("0.weight", "3.weight"):
        assert torch.equal(one[k], models[0][k]), k  # W_1 exactly
    for k in ("0.bias", "1.weight"):
        torch.testing.assert_close(one[k], models[0][k], rtol=0, atol=1e-6)
    same = npsfuse.merge(base, models, "regmean", statistics=[grams[0]] * 3)
    for k in base:
        torch.testing.assert_close(same[k], sum(sd[k] for sd in models) / 3, rtol=0, atol=2e-6)


def test_regmean_recovers_joint_least_squares() -> None:
    # Jin et al.'s motivation: with α = 1, the merged linear layer is the
    # least-squares fit of every model's outputs on that model's inputs.
    g = torch.Generator().manual_seed(7)
    base = {"weight": torch.randn(3, 5, generator=g)}
    models = [{"weight": torch.randn(3, 5, generator=g)} for _ in range(3)]
    inputs = [torch.randn(40, 5, generator=g) * torch.rand(5, generator=g) * 3 for _ in range(3)]
    grams = []
    for sd, x in zip(models, inputs, strict=True):
        lin = nn.Linear(5, 3, bias=False)
        lin.load_state_dict(sd)
        grams.append(npsfuse.stats.regmean_grams(lin, [x[:20], x[20:]]))
    got = npsfuse.merge(base, models, "regmean", statistics=grams, alpha=1.0)
    xs = np.concatenate([x.double().numpy() for x in inputs])
    ys = np.concatenate([(x.double() @ sd["weight"].double().T).numpy()
                         for x, sd in zip(inputs, models, strict=True)])
    w_ls = np.linalg.lstsq(xs, ys, rcond=None)[0].T
    np.testing.assert_allclose(got["weight"].numpy(), w_ls, rtol=0, atol=2e-5)
    # The plain average does not fit: RegMean's residual is smaller.
    avg = sum(sd["weight"] for sd in models).double().numpy() / 3
    assert np.square(xs @ got["weight"].double().numpy().T - ys).sum() < \
        np.square(xs @ avg.T - ys).sum()


# ------------------------------------------------------- merge(...) errors


def _fishers(models: list[StateDict]) -> list[StateDict]:
    return [{k: torch.ones_like(v) for k, v in sd.items()} for sd in models]


@pytest.mark.parametrize(
    ("method", "edit", "match"),
    [
        ("fisher", lambda st: None, r"needs statistics=\[…\], one per model"),
        ("fisher", lambda st: st[:2], "2 statistics given for 3 models"),
        ("fisher", lambda st: [st[0], None, st[2]], "statistics of model 1 are missing"),
        ("fisher", lambda st: [st[0], {k: v for k, v in st[1].items() if k != "0.bias"}, st[2]],
         "statistics of model 1 lack tensor '0.bias', which model 0's have"),
        ("fisher", lambda st: [{**s, "0.bias": torch.ones(3)} for s in st],
         r"Fisher of tensor '0.bias' for model 0 has shape \(3,\), the tensor \(8,\)"),
        ("fisher", lambda st: [{"other.weight": torch.ones(2)} for _ in st],
         "none of the fisher statistics names a merged tensor"),
        ("fisher", lambda st: [st[0], st[1], {**st[2], "3.bias": torch.tensor([1, math.nan, 1])}],
         r"tensor \"3.bias\": the Fisher values of model 2 have NaN at flat index 1"),
        ("fisher", lambda st: [{**s, "3.bias": -torch.ones(3)} for s in st],
         "model 0 have -1 at flat index 0"),
        ("regmean", lambda st: [{"0.weight": torch.ones(6, 5)} for _ in st],
         r"Gram matrix of tensor '0.weight' for model 0 has shape \(6, 5\)"),
        ("regmean", lambda st: [{"0.weight": torch.eye(5)} for _ in st],
         r"is 5×5, but the tensor's shape is \[8 6\]"),
        ("regmean", lambda st: [{"0.bias": torch.eye(8)} for _ in st],
         "only 2-D linear weights have one"),
        ("regmean", lambda st: [{"0.weight": torch.eye(6)}, {"0.weight": torch.eye(6)},
                                {"0.weight": torch.full((6, 6), math.inf)}],
         r"tensor \"0.weight\": the Gram matrix of model 2 has \+Inf at flat index 0"),
    ],
)
def test_merge_errors_name_model_and_tensor(method: str, edit: Any, match: str) -> None:
    base, models = family()
    st = edit(_fishers(models))
    with pytest.raises(ValueError, match=match):
        npsfuse.merge(base, models, method, statistics=st)


def test_merge_parameter_errors() -> None:
    base, models = family()
    st = _fishers(models)
    with pytest.raises(ValueError, match="weights must be non-negative"):
        npsfuse.merge(base, models, "fisher", statistics=st, weights=[1, -1, 1])
    with pytest.raises(ValueError, match=r"fisher_floor must lie in \(0, 1e\+30\], got 0"):
        npsfuse.merge(base, models, "fisher", statistics=st, fisher_floor=0)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        npsfuse.merge(base, models, "regmean", statistics=st, alpha=1.5)
    with pytest.raises(ValueError, match="statistics is not a parameter of ties"):
        npsfuse.merge(base, models, "ties", statistics=st)
    with pytest.raises(ValueError, match=r"alpha is not a parameter of fisher \(it"):
        npsfuse.merge(base, models, "fisher", statistics=st, alpha=0.5)


def test_statistics_from_files_and_unused_names(tmp_path: Path) -> None:
    base, models = family()
    fishers = [npsfuse.stats.fisher(module_with(sd), batches(), seed=i)
               for i, sd in enumerate(models)]
    paths = [npsfuse.stats.save({**f, "head.weight": torch.ones(2)}, tmp_path / f"f{i}.st")
             for i, f in enumerate(fishers)]
    from_files = npsfuse.merge(base, models, "fisher", statistics=paths)
    in_memory = npsfuse.merge(base, models, "fisher", statistics=fishers)
    for k in base:
        assert torch.equal(from_files[k], in_memory[k])
    assert from_files.report["statistics_unused"] == ["head.weight"]
    assert "statistics_unused" not in in_memory.report


# ------------------------------------------------------------ adamerging


def _ada(**kw: Any) -> npsfuse.MergeResult:
    base, models = family()
    return npsfuse.adamerging(base, models, mlp(), batches(), progress=False, **kw)


def _adamerging_reference(base: StateDict, models: list[StateDict], xs: list[torch.Tensor],
                          steps: int, lr: float, init: float, layer: bool) -> torch.Tensor:
    """AdaMerging written out by hand: the MLP's forward as formulas."""
    names = list(base)
    tau = {k: torch.stack([sd[k] - base[k] for sd in models]) for k in names}
    raw = torch.full((len(names), len(models)) if layer else (len(models),), init,
                     requires_grad=True)
    opt = torch.optim.Adam([raw], lr=lr)
    for _ in range(steps):
        c = raw.clamp(0, 1)
        w = {k: base[k] + torch.tensordot(c[i] if layer else c, tau[k], dims=1)
             for i, k in enumerate(names)}
        ent = []
        for x in xs:
            h = x @ w["0.weight"].T + w["0.bias"]
            h = torch.nn.functional.layer_norm(h, (HID,), w["1.weight"], w["1.bias"])
            logits = torch.relu(h) @ w["3.weight"].T + w["3.bias"]
            p = torch.softmax(logits, -1)
            ent.append(-(p * torch.log_softmax(logits, -1)).sum(-1).mean())
        loss = torch.stack(ent).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return raw.detach().clamp(0, 1)


@pytest.mark.parametrize("granularity", ["layer", "task"])
def test_adamerging_matches_pytorch_reference(granularity: str) -> None:
    base, models = family()
    xs = batches()
    res = npsfuse.adamerging(base, models, mlp(), xs, granularity=granularity, steps=15,
                             lr=0.02, progress=False)
    want = _adamerging_reference(base, models, xs, 15, 0.02, 0.3, granularity == "layer")
    got = res.report["coefficients"]
    got_t = torch.tensor(list(got.values()) if granularity == "layer" else got)
    torch.testing.assert_close(got_t, want, rtol=0, atol=1e-5)
    assert res.report["granularity"] == granularity and len(res.report["entropy"]) == 15


@pytest.mark.parametrize("granularity", ["layer", "task"])
def test_adamerging_weights_come_from_the_engine(granularity: str) -> None:
    base, models = family()
    res = npsfuse.adamerging(base, models, mlp(), batches(), granularity=granularity, steps=5,
                             lr=0.05, progress=False)
    coef = res.report["coefficients"]
    for k in base:
        w = coef[k] if granularity == "layer" else coef
        direct = npsfuse.merge(base, models, "task_arithmetic", weights=w, lam=1.0,
                               normalize=False)
        assert torch.equal(res[k], direct[k]), k


def test_adamerging_seed_bounds_and_entropy() -> None:
    kw = {"steps": 30, "lr": 0.2, "batches_per_step": 1}
    a, b, c = _ada(seed=1, **kw), _ada(seed=1, **kw), _ada(seed=2, **kw)
    assert a.report["coefficients"] == b.report["coefficients"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a.report["entropy"] != c.report["entropy"]  # another batch order
    values = [x for v in a.report["coefficients"].values() for x in v]
    assert all(0.0 <= x <= 1.0 for x in values)
    assert any(x in (0.0, 1.0) for x in values)  # lr 0.2 pushes some past the bounds
    full = _ada(steps=30, lr=0.05)
    assert full.report["entropy_final"] < full.report["entropy"][0] - 0.05
    assert full.report["entropy"][-1] < full.report["entropy"][0]


def test_adamerging_errors() -> None:
    base, models = family()
    with pytest.raises(ValueError, match="granularity"):
        npsfuse.adamerging(base, models, mlp(), batches(), granularity="row", progress=False)
    with pytest.raises(ValueError, match="no batches"):
        npsfuse.adamerging(base, models, mlp(), [], progress=False)
    with pytest.raises(ValueError, match="'extra.weight' of the base is not in the module"):
        npsfuse.adamerging({**base, "extra.weight": torch.ones(2)},
                           [{**sd, "extra.weight": torch.ones(2)} for sd in models], mlp(),
                           batches(), progress=False)


# ------------------------------------------------------------------ YAML


def _folder(path: Path, sd: StateDict) -> Path:
    path.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize("method", ["fisher", "regmean"])
def test_yaml_equals_python_bit_for_bit(tmp_path: Path, method: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Statistics paths are resolved like model paths (here: against the
    # working directory, as mergekit does).
    monkeypatch.chdir(tmp_path)
    base, models = family()
    xs = batches()
    if method == "fisher":
        stats = [npsfuse.stats.fisher(module_with(sd), xs, seed=i) for i, sd in enumerate(models)]
        params = "parameters: {fisher_floor: 0.001, lambda: 0.9}\n"
        kw: dict[str, Any] = {"fisher_floor": 0.001, "lam": 0.9}
    else:
        stats = [npsfuse.stats.regmean_grams(module_with(sd), xs) for sd in models]
        params = "parameters: {alpha: 0.7}\n"
        kw = {"alpha": 0.7}
    stats[0]["not.merged"] = torch.ones(3)
    _folder(tmp_path / "base", base)
    (tmp_path / "stats").mkdir()
    lines = []
    weights = [1.0, 2.0, 0.5]
    for i, (sd, st) in enumerate(zip(models, stats, strict=True)):
        _folder(tmp_path / f"ft{i}", sd)
        npsfuse.stats.save(st, tmp_path / "stats" / f"ft{i}.safetensors")
        lines.append(f"  - model: ft{i}\n    parameters: {{weight: {weights[i]}, "
                     f"statistics: stats/ft{i}.safetensors}}\n")
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(f"merge_method: {method}\nbase_model: base\nmodels:\n" + "".join(lines) + params)
    out = npsfuse.merge_checkpoints(cfg, tmp_path / "out", quiet=True)
    from safetensors.torch import load_file

    got = load_file(str(Path(out) / "model.safetensors"))
    want = npsfuse.merge(base, models, method, statistics=stats, weights=weights, **kw)
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_yaml_statistics_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base, models = family(2)
    _folder(tmp_path / "base", base)
    for i, sd in enumerate(models):
        _folder(tmp_path / f"ft{i}", sd)
    npsfuse.stats.save({"0.weight": torch.ones(8, 5)}, tmp_path / "bad.safetensors")
    cases = [
        ("fisher", "  - model: ft0\n  - model: ft1\n",
         "models[0]: fisher needs parameters.statistics"),
        ("ties", "  - model: ft0\n    parameters: {statistics: bad.safetensors}\n",
         "models[0].parameters.statistics is not a parameter of ties (it belongs to fisher"),
        ("fisher", "  - model: ft0\n    parameters: {statistics: missing.safetensors}\n",
         "missing.safetensors is not a file"),
        ("fisher", "  - model: ft0\n    parameters: {statistics: bad.safetensors}\n",
         "the Fisher values have shape [8 5], the tensor [8 6]"),
    ]
    for method, models_yaml, match in cases:
        cfg = tmp_path / "m.yaml"
        cfg.write_text(f"merge_method: {method}\nbase_model: base\nmodels:\n{models_yaml}")
        with pytest.raises(ValueError) as err:
            npsfuse.merge_checkpoints(cfg, tmp_path / "out", quiet=True)
        assert match in str(err.value), (match, str(err.value))
