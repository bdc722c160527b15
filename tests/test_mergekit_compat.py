"""Differential test: ``npsfuse merge`` against mergekit 0.1.5 (issue #14).

Both merge the same tiny random Llama (4 layers, float32 safetensors) and
three fine-tunes of it from the same YAML config; mergekit runs in process
(``run_merge``), npsfuse through its CLI. Deterministic methods must agree
within a few float32 ulps per element (the bound of each case says why it
is not 0: mergekit and npsfuse round in different orders). DARE and DELLA
draw their masks from different generators, so there the kept fraction and
the L1 norm of every merged task vector must agree instead.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import npsfuse
import pytest
import yaml
from test_daemon import daemon, make_daemon, npsfused_bin  # noqa: F401  (the daemon fixtures)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
mergekit = pytest.importorskip("mergekit")
safetensors_torch = pytest.importorskip("safetensors.torch")

N_LAYERS = 4


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The base and three fine-tunes (τ ~ 0.02·N(0, 1)), saved once."""
    root = tmp_path_factory.mktemp("mkfamily")
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg).float()
    base.save_pretrained(root / "base", safe_serialization=True)
    sd = {k: v.clone() for k, v in base.state_dict().items()}
    for i in range(3):
        g = torch.Generator().manual_seed(i + 1)
        ft = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
        m = transformers.LlamaForCausalLM(cfg).float()
        m.load_state_dict(ft)
        m.save_pretrained(root / f"ft{i}", safe_serialization=True)
    return {
        "root": root,
        "base": str(root / "base"),
        "ft": [str(root / f"ft{i}") for i in range(3)],
    }


def _load(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(safetensors_torch.load_file(f))
    return out


def _run_mergekit(conf: dict[str, Any], out: Path) -> dict[str, Any]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(
        MergeConfiguration.model_validate(conf),
        str(out),
        options=MergeOptions(
            copy_tokenizer=False, quiet=True, random_seed=0, write_model_card=False
        ),
    )
    return _load(out)


def _run_npsfuse(conf: dict[str, Any], out: Path) -> subprocess.CompletedProcess[str]:
    path = out.with_suffix(".yml")
    path.write_text(yaml.safe_dump(conf))
    return subprocess.run(
        [sys.executable, "-m", "npsfuse.cli", "merge", str(path), str(out), "--force"],
        capture_output=True,
        text=True,
        check=False,
    )


def _ordered(x: Any) -> Any:
    """float32 bits mapped to integers in the order of the values."""
    i = x.float().contiguous().view(torch.int32).long()
    return torch.where(i < 0, -(i & 0x7FFFFFFF), i)


def _ulps(a: Any, b: Any) -> int:
    return int((_ordered(a) - _ordered(b)).abs().max().item()) if a.numel() else 0


def _models(fts: list[str], **params: Any) -> list[dict[str, Any]]:
    return [{"model": m, "parameters": dict(params)} if params else {"model": m} for m in fts]


FILTER_W = [
    {"filter": "self_attn", "value": 0.3},
    {"filter": "mlp", "value": [0.2, 0.9]},
    {"value": 0.7},
]


def _cases(f: dict[str, Any]) -> dict[str, tuple[dict[str, Any], int]]:
    """Name → (config, allowed ulps). The bounds: 0 where both compute the
    same float32 operations in the same order. linear and slerp are measured
    in ulps of the largest input entry (an average can cancel far below its
    terms): linear rounds each w·θ where mergekit fuses it into the sum
    (≤ 1 ulp per model after the first; element by element in
    test_linear_differences_are_mergekits_fused_multiply_add; 0 with weights
    1); slerp's coefficients come from cos Ω in float64 here, float32 in
    mergekit (element by element in test_slerp_differences_are_its_coefficients;
    2 to 4 ulps measured on two families); with rescale (also in input ulps, and the
    factor can be 3 or more, so the result exceeds the inputs) the L1 sums
    of the factor are float64 here, float32 in mergekit (element by element
    in test_rescale_differences_are_the_l1_sums; 16 and 8 ulps measured).
    model_stock's is explained in its test."""
    B, M = f["base"], f["ft"]
    d = "float32"
    return {
        "linear": ({"merge_method": "linear", "models": _models(M, weight=1.0), "dtype": d}, 0),
        "linear_weights_gradient": (
            {"merge_method": "linear", "models": _models(M, weight=[1.0, 3.0]), "dtype": d},
            3,
        ),
        "linear_base_not_in_models": (
            {
                "merge_method": "linear",
                "base_model": B,
                "models": _models(M, weight=1.0),
                "parameters": {"weight": 0.5},
                "dtype": d,
            },
            0,
        ),
        "task_arithmetic": (
            {
                "merge_method": "task_arithmetic",
                "base_model": B,
                "models": _models(M, weight=0.5),
                "dtype": d,
            },
            0,
        ),
        "task_arithmetic_filter": (
            {
                "merge_method": "task_arithmetic",
                "base_model": B,
                "models": _models(M, weight=FILTER_W),
                "dtype": d,
            },
            0,
        ),
        "task_arithmetic_global_gradient": (
            {
                "merge_method": "task_arithmetic",
                "base_model": B,
                "models": _models(M),
                "dtype": d,
                "parameters": {"weight": [0.1, 0.5, 1.0], "lambda": [1.0, 0.5]},
            },
            0,
        ),
        "task_arithmetic_own_over_global": (
            {
                "merge_method": "task_arithmetic",
                "base_model": B,
                "dtype": d,
                "models": [
                    {"model": M[0], "parameters": {"weight": [{"filter": "mlp", "value": 0.9}]}},
                    {"model": M[1], "parameters": {"weight": 0.2}},
                    {"model": M[2]},
                ],
                "parameters": {"weight": [0.3, 0.6]},
            },
            0,
        ),
        "ties": (
            {
                "merge_method": "ties",
                "base_model": B,
                "models": _models(M, weight=0.5, density=0.5),
                "dtype": d,
            },
            0,
        ),
        "ties_density_gradient": (
            {
                "merge_method": "ties",
                "base_model": B,
                "dtype": d,
                "models": _models(M, weight=0.5, density=[0.2, 0.8]),
                "parameters": {"normalize": False},
            },
            0,
        ),
        "ties_density_filter": (
            {
                "merge_method": "ties",
                "base_model": B,
                "dtype": d,
                "models": _models(M, weight=1.0),
                "parameters": {"density": [{"filter": "mlp", "value": 0.3}, {"value": 0.7}]},
            },
            0,
        ),
        "ties_normalize_filter": (
            {
                "merge_method": "ties",
                "base_model": B,
                "dtype": d,
                "models": _models(M, weight=0.6, density=0.5),
                "parameters": {"normalize": [{"filter": "mlp", "value": False}, {"value": True}]},
            },
            0,
        ),
        "ties_rescale": (
            {
                "merge_method": "ties",
                "base_model": B,
                "dtype": d,
                "models": _models(M, weight=0.5, density=0.3),
                "parameters": {"rescale": True},
            },
            16,
        ),
        "breadcrumbs_rescale": (
            {
                "merge_method": "breadcrumbs",
                "base_model": B,
                "dtype": d,
                "models": _models(M, weight=0.5, density=0.8, gamma=0.05),
                "parameters": {"rescale": True},
            },
            8,
        ),
        "breadcrumbs": (
            {
                "merge_method": "breadcrumbs",
                "base_model": B,
                "dtype": d,
                "models": _models(M, weight=0.5, density=0.8, gamma=0.05),
            },
            0,
        ),
        "breadcrumbs_ties_per_model_gamma": (
            {
                "merge_method": "breadcrumbs_ties",
                "base_model": B,
                "dtype": d,
                "models": [
                    {"model": m, "parameters": {"weight": 1.0, "density": 0.7, "gamma": g}}
                    for m, g in zip(M, [0.01, 0.05, [0.0, 0.1]], strict=True)
                ],
            },
            0,
        ),
        "nearswap": (
            {
                "merge_method": "nearswap",
                "base_model": B,
                "models": [{"model": M[0]}],
                "parameters": {"t": 0.01},
                "dtype": d,
            },
            0,
        ),
        "slerp": (
            {
                "merge_method": "slerp",
                "base_model": M[0],
                "models": [{"model": M[0]}, {"model": M[1]}],
                "parameters": {"t": 0.3},
                "dtype": d,
            },
            4,
        ),
        "slerp_gradient_filter": (
            {
                "merge_method": "slerp",
                "base_model": M[0],
                "dtype": d,
                "models": [{"model": M[1]}, {"model": M[0]}],
                "parameters": {
                    "t": [
                        {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                        {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                        {"value": 0.5},
                    ]
                },
            },
            4,
        ),
        "multislerp": (
            {
                "merge_method": "multislerp",
                "base_model": B,
                "models": _models(M, weight=1.0),
                "dtype": d,
            },
            MULTISLERP_ULPS,
        ),
        "multislerp_raw_weights": (
            {
                "merge_method": "multislerp",
                "base_model": B,
                "models": [
                    {"model": m, "parameters": {"weight": w}}
                    for m, w in zip(M, [0.2, 0.5, 1.3], strict=True)
                ],
                "parameters": {"normalize_weights": False},
                "dtype": d,
            },
            MULTISLERP_RAW_ULPS,
        ),
        "karcher": (
            {"merge_method": "karcher", "base_model": B, "models": _models(M), "dtype": d},
            KARCHER_ULPS,
        ),
        "karcher_few_steps": (
            {
                "merge_method": "karcher",
                "base_model": B,
                "models": _models(M[:2]),
                "parameters": {"max_iter": 3, "tol": 1e-3},
                "dtype": d,
            },
            KARCHER_ULPS,
        ),
        "sce": (
            {"merge_method": "sce", "base_model": B, "models": _models(M), "dtype": d},
            SCE_ULPS,
        ),
        "sce_select_topk": (
            {
                "merge_method": "sce",
                "base_model": B,
                "models": _models(M),
                "parameters": {"select_topk": 0.3, "int8_mask": True},
                "dtype": d,
            },
            SCE_ULPS,
        ),
        "nuslerp": (
            {
                "merge_method": "nuslerp",
                "base_model": B,
                "models": [
                    {"model": m, "parameters": {"weight": w}}
                    for m, w in zip(M[:2], [0.3, 0.7], strict=True)
                ],
                "parameters": {"nuslerp_row_wise": True},
                "dtype": d,
            },
            NUSLERP_ULPS,
        ),
        "ram": (
            {"merge_method": "ram", "base_model": B, "models": _models(M), "dtype": d},
            0,
        ),
        "ram_epsilon": (
            {
                "merge_method": "ram",
                "base_model": B,
                "models": _models(M),
                "parameters": {"epsilon": 0.02},
                "dtype": d,
            },
            0,
        ),
    }


#: multislerp and karcher are measured in ulps of the largest |input| at
#: each entry, like linear (their results are averages); the bounds are
#: mergekit's own float32 rounding (norms, per-entry quotients, sums of unit
#: vectors, multislerp's tangent, exactly zero, as rounding noise), shown
#: element by element in
#: test_multislerp_and_karcher_differences_are_mergekits_rounding. Measured
#: on this family: 6 (multislerp), 4 (karcher, both cases); 20 with raw
#: weights summing to 2, whose results are about twice the inputs.
MULTISLERP_ULPS = 8
MULTISLERP_RAW_ULPS = 24
KARCHER_ULPS = 6
#: sce's bound (in input ulps, as linear: a disjoint mean can cancel): its
#: weights mean(τ_t²) / Σ mean(τ_s²) are float64 sums here, float32 in
#: mergekit (element by element in test_sce_differences_are_its_weights;
#: 4 measured).
SCE_ULPS = 4
#: nuslerp's: its cosine and coefficients are float32 in mergekit, float64
#: here (element by element in
#: test_multislerp_and_karcher_differences_are_mergekits_rounding), and t
#: comes from the float32 weights here (0.7 / (0.3 + 0.7) in float64 there).
#: 6 measured.
NUSLERP_ULPS = 8

CASES = list(_cases({"base": "b", "ft": ["a", "b", "c"]}))


@pytest.mark.parametrize("name", CASES)
def test_deterministic_methods_match_mergekit(
    llama: dict[str, Any], tmp_path: Path, name: str
) -> None:
    conf, bound = _cases(llama)[name]
    want = _run_mergekit(conf, tmp_path / "mk")
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode == 0, r.stderr
    got = _load(tmp_path / "np")
    assert set(got) == set(want)
    if name.startswith(
        ("linear", "slerp", "multislerp", "karcher", "sce", "nuslerp")
    ) or name.endswith("rescale"):
        # An average of models can cancel to far below its terms, where the
        # terms' last-bit rounding is many ulps of the result: linear and
        # slerp are measured in ulps of the largest input entry |θ_t|.
        inputs = [_load(Path(m["model"])) for m in conf["models"]]
        if conf.get("base_model"):
            inputs.append(_load(Path(conf["base_model"])))
        worst = max((_input_ulps(got[k], want[k], [x[k] for x in inputs]), k) for k in want)
    else:
        worst = max((_ulps(got[k], want[k]), k) for k in want)
    assert worst[0] <= bound, f"{name}: {worst[0]} ulps at {worst[1]} (allowed {bound})"


def _input_ulps(a: Any, b: Any, inputs: list[Any]) -> float:
    """max |a − b| in ulps of the largest |input| at each entry."""
    ref = torch.stack([x.float().abs() for x in inputs]).amax(0)
    spacing = torch.nextafter(ref, torch.tensor(float("inf"))) - ref
    return float(((a.float() - b.float()).abs() / spacing).max().item())


def _layer_t(name: str) -> float:
    """mergekit's layer position of a tensor (4 layers): i/3 in layer i, else 0."""
    parts = name.split(".")
    return int(parts[2]) / (N_LAYERS - 1) if parts[1] == "layers" else 0.0


def test_linear_differences_are_mergekits_fused_multiply_add(
    llama: dict[str, Any], tmp_path: Path
) -> None:
    """Explains linear's ulps element by element: mergekit accumulates
    Σ w_t·θ_t with torch's addcmul_, which this CPU build fuses (one
    rounding per model: fma), while npsfuse rounds each product first. With
    the weights of the gradient [1, 3] (w = 1 + 2t per tensor), npsfuse must
    equal the unfused sum divided by Σ w bit for bit, and mergekit the fused
    one, on every tensor."""
    M = llama["ft"]
    conf = {"merge_method": "linear", "models": _models(M, weight=[1.0, 3.0]), "dtype": "float32"}
    want = _run_mergekit(conf, tmp_path / "mk")
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode == 0, r.stderr
    got, xs = _load(tmp_path / "np"), [_load(Path(m)) for m in M]
    for k in want:
        t = _layer_t(k)
        w = torch.tensor([(1 - t) * 1.0 + t * 3.0] * len(M), dtype=torch.float32)
        fused = torch.zeros_like(xs[0][k])
        unfused = torch.zeros_like(xs[0][k])
        for i, x in enumerate(xs):
            # the product is exact in float64: one rounding, as an fma
            fused = (fused.double() + x[k].double() * w[i].double()).float()
            unfused = unfused + x[k] * w[i]
        assert torch.equal(got[k], unfused / w.sum()), k
        assert torch.equal(want[k], fused / w.sum()), k


def _slerp(a: Any, b: Any, t: float, f64: bool) -> Any:
    """mergekit's slerp of one tensor, with its coefficients computed in
    float32 (as mergekit) or float64 rounded to float32 (as npsfuse)."""
    if not f64:
        from mergekit.merge_methods.slerp import slerp

        return slerp(torch.tensor([t]), a.reshape(1, -1), b.reshape(1, -1)).reshape(a.shape)
    x, y = a.reshape(-1).double(), b.reshape(-1).double()
    na, nb = x.norm().item(), y.norm().item()
    na, nb = (na if na > 1e-8 else 1.0), (nb if nb > 1e-8 else 1.0)
    cos = float(x @ y) / (na * nb)
    if abs(cos) > 0.9995:
        ca, cb = 1 - t, t
    else:
        om = math.acos(cos)
        ca, cb = math.sin(om - t * om) / math.sin(om), math.sin(t * om) / math.sin(om)
    c = torch.tensor([ca, cb], dtype=torch.float32)
    return c[0] * a + c[1] * b


def test_slerp_differences_are_its_coefficients(llama: dict[str, Any], tmp_path: Path) -> None:
    """Explains slerp's ulps element by element: npsfuse computes cos Ω and
    the two coefficients in float64 (then rounds them to float32), mergekit
    in float32; with its own coefficients each, the same float32
    combination c_a·θ_base + c_b·θ_other gives mergekit's result and
    npsfuse's, bit for bit."""
    M = llama["ft"]
    conf = {
        "merge_method": "slerp",
        "base_model": M[0],
        "models": [{"model": M[0]}, {"model": M[1]}],
        "parameters": {"t": 0.3},
        "dtype": "float32",
    }
    want = _run_mergekit(conf, tmp_path / "mk")
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode == 0, r.stderr
    got, a, b = _load(tmp_path / "np"), _load(Path(M[0])), _load(Path(M[1]))
    for k in want:
        assert torch.equal(want[k], _slerp(a[k], b[k], 0.3, f64=False)), f"mergekit: {k}"
        assert torch.equal(got[k], _slerp(a[k], b[k], 0.3, f64=True)), f"npsfuse: {k}"


def _ties_rescaled(base: Any, models: list[Any], w: float, density: float, f64_sums: bool) -> Any:
    """mergekit's ties with rescale, in its float32 operations, with the L1
    sums of the rescale factor in float32 (torch, as mergekit) or float64
    rounded to float32 (as npsfuse)."""
    deltas = []
    for x in models:
        tau = x - base
        k = max(1, int(density * tau.numel()))
        mask = torch.zeros(tau.numel())
        mask[torch.argsort(tau.abs().reshape(-1), descending=True)[:k]] = 1
        kept = tau * mask.reshape(tau.shape)
        if f64_sums:
            before = torch.tensor(float(tau.double().abs().sum()), dtype=torch.float32)
            after = torch.tensor(float(kept.double().abs().sum()), dtype=torch.float32)
        else:
            before, after = tau.abs().sum(), kept.abs().sum()
        deltas.append(kept * (before / after))
    d = torch.stack(deltas)
    weights = torch.full((len(models),) + (1,) * base.dim(), w, dtype=torch.float32)
    d = d * weights
    sign = d.sign()
    majority = (d.sum(dim=0) >= 0).float() * 2 - 1
    agree = (sign == majority).float()
    mixed = (d * agree).sum(dim=0)
    divisor = (weights * agree).sum(dim=0)
    divisor[divisor == 0] = 1
    return base + mixed / divisor


def test_rescale_differences_are_the_l1_sums(llama: dict[str, Any], tmp_path: Path) -> None:
    """Explains ties_rescale's ulps element by element: the rescale factor
    Σ|τ| / Σ|τ̂| is mergekit's quotient of float32 sums (torch's summation
    order), npsfuse's of float64 sums rounded to float32 (independent of the
    thread count); the factors differ by up to 3 ulps on this family. With
    its own factor each, the same float32 computation gives mergekit's
    result and npsfuse's, bit for bit."""
    B, M = llama["base"], llama["ft"]
    conf = {
        "merge_method": "ties",
        "base_model": B,
        "dtype": "float32",
        "models": _models(M, weight=0.5, density=0.3),
        "parameters": {"rescale": True},
    }
    want = _run_mergekit(conf, tmp_path / "mk")
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode == 0, r.stderr
    got, base, xs = _load(tmp_path / "np"), _load(Path(B)), [_load(Path(m)) for m in M]
    for k in want:
        models = [x[k] for x in xs]
        assert torch.equal(want[k], _ties_rescaled(base[k], models, 0.5, 0.3, f64_sums=False)), (
            f"mergekit: {k}"
        )
        assert torch.equal(got[k], _ties_rescaled(base[k], models, 0.5, 0.3, f64_sums=True)), (
            f"npsfuse: {k}"
        )


def _model_stock(base: Any, models: list[Any], f64: bool) -> Any:
    """Model Stock in mergekit's float32 operations, with t from cosines in
    float32 (torch, as mergekit) or float64 rounded to float32 (npsfuse)."""
    dt = torch.float64 if f64 else torch.float32
    w0 = base.reshape(-1)
    offsets = [(m.reshape(-1) - w0).to(dt) for m in models]
    cos = []
    for a in range(len(offsets)):
        for b in range(a + 1, len(offsets)):
            norms = torch.norm(offsets[a]) * torch.norm(offsets[b])
            cos.append(((offsets[a] * offsets[b]).sum() / norms.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cos).mean()
    n = len(models)
    t = (n * c / (1 + (n - 1) * c)).to(torch.float32)
    average = sum(m.reshape(-1) for m in models) / n
    return (t * average + (1 - t) * w0).reshape(base.shape)


def test_model_stock_differences_are_its_cosines(llama: dict[str, Any], tmp_path: Path) -> None:
    """Explains model_stock's differences element by element: its t comes
    from the task vectors' mean cosine, which mergekit computes in float32
    (torch's summation order) and npsfuse in float64; t then differs in its
    last bits and every entry t·mean + (1 − t)·θ₀ by a few ulps (up to 512
    raw ulps where the result is near 0). With its own t each, the same
    float32 computation gives mergekit's result and npsfuse's, bit for bit."""
    B, M = llama["base"], llama["ft"]
    conf = {
        "merge_method": "model_stock",
        "base_model": B,
        "models": _models(M),
        "dtype": "float32",
    }
    want = _run_mergekit(conf, tmp_path / "mk")
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode == 0, r.stderr
    got, base, xs = _load(tmp_path / "np"), _load(Path(B)), [_load(Path(m)) for m in M]
    for k in want:
        models = [x[k] for x in xs]
        assert torch.equal(want[k], _model_stock(base[k], models, f64=False)), f"mergekit: {k}"
        assert torch.equal(got[k], _model_stock(base[k], models, f64=True)), f"npsfuse: {k}"


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("dare_linear", {"density": 0.5}),
        ("dare_ties", {"density": 0.4}),
        ("della_linear", {"density": 0.5, "epsilon": 0.1}),
        ("della", {"density": 0.5, "epsilon": 0.2}),
        ("dare_linear", {"density": 0.5, "rescale": False}),
        ("della_linear", {"density": 0.5, "epsilon": 0.1, "rescale": False}),
    ],
)
def test_random_methods_match_mergekit_statistics(
    llama: dict[str, Any], tmp_path: Path, method: str, params: dict[str, Any]
) -> None:
    """Different random draws, so statistics instead of values. For every
    method: the fraction of entries the merged task vector keeps and its L1
    norm, over the whole model, within 1 % and 2 % of mergekit's (measured:
    ≤ 0.4 % and ≤ 1 %; the sampling sd of the difference is ~0.2 % over the
    model's 90 k entries; measured: ≤ 0.2 % and ≤ 0.5 %). For the linear variants of one model with
    rescale (the default) each tensor's L1 norm is restored exactly, so it
    must equal mergekit's per tensor to float32 rounding (1e-4)."""
    B, M = llama["base"], llama["ft"]
    params = dict(params)
    rescale = params.pop("rescale", None)
    glob = {} if rescale is None else {"rescale": rescale}
    n = 1 if method.endswith("linear") else 3
    conf = {
        "merge_method": method,
        "base_model": B,
        "models": _models(M[:n], weight=1.0, **params),
        "parameters": glob,
        "dtype": "float32",
    }
    want = _run_mergekit(conf, tmp_path / "mk")
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode == 0, r.stderr
    got, base = _load(tmp_path / "np"), _load(Path(B))
    kept_g = kept_w = l1_g = l1_w = count = 0.0
    for k in want:
        tg, tw = (got[k] - base[k]).double(), (want[k] - base[k]).double()
        kept_g += float((tg != 0).sum())
        kept_w += float((tw != 0).sum())
        l1_g += float(tg.abs().sum())
        l1_w += float(tw.abs().sum())
        count += tg.numel()
        if n == 1 and rescale is not False:
            assert abs(float(tg.abs().sum()) - float(tw.abs().sum())) <= 1e-4 * float(
                tw.abs().sum()
            ), k
    assert abs(kept_g - kept_w) / count < 0.01, (kept_g / count, kept_w / count)
    assert abs(l1_g - l1_w) <= 0.02 * l1_w, (l1_g, l1_w)


@pytest.mark.parametrize(
    ("conf", "words"),
    [
        ({"merge_method": "nosuch", "models": [{"model": "."}]}, 'unknown merge_method "nosuch"'),
    ],
)
def test_errors_without_knock_on(tmp_path: Path, conf: dict[str, Any], words: str) -> None:
    """An unknown method is one problem, not also "base_model is missing"."""
    r = _run_npsfuse(conf, tmp_path / "out")
    assert r.returncode != 0
    assert words in r.stderr
    assert "base_model is missing" not in r.stderr
    assert "1 problem" in r.stderr


def test_multi_document_yaml_is_refused(llama: dict[str, Any], tmp_path: Path) -> None:
    """mergekit refuses a stream of several YAML documents; so does npsfuse
    (it merged the first and ignored the rest)."""
    one = {
        "merge_method": "task_arithmetic",
        "base_model": llama["base"],
        "models": _models(llama["ft"][:1]),
    }
    path = tmp_path / "two.yml"
    path.write_text(yaml.safe_dump(one) + "---\n" + yaml.safe_dump(one))
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(path.read_text())  # what mergekit's CLI does with the file
    r = subprocess.run(
        [sys.executable, "-m", "npsfuse.cli", "merge", str(path), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode != 0
    assert "more than one YAML document" in r.stderr


def test_doors_agree_on_per_tensor_forms(llama: dict[str, Any], tmp_path: Path, daemon) -> None:  # noqa: F811
    """Gradients and filter lists, global and per model, mean the same in
    npsfuse.merge's keywords, a YAML config and a daemon merge job: the
    three results are equal bit for bit (and the CLI's is mergekit's)."""
    B, M = llama["base"], llama["ft"]
    weights = [[0.2, 1.0], 0.5, [{"filter": "mlp", "value": [1.0, 0.1]}, {"value": 0.4}]]
    density = [{"filter": "self_attn", "value": 0.3}, {"value": [0.9, 0.5]}]
    conf = {
        "merge_method": "ties",
        "base_model": B,
        "dtype": "float32",
        "models": [
            {"model": m, "parameters": {"weight": w}} for m, w in zip(M, weights, strict=True)
        ],
        "parameters": {"density": density, "lambda": [1.0, 0.8]},
    }
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode == 0, r.stderr
    cli = _load(tmp_path / "np")
    notebook = npsfuse.merge(B, M, "ties", weights=weights, density=density, lam=[1.0, 0.8])
    job = dict(
        conf,
        base_model=_load(Path(B)),
        models=[
            {"model": _load(Path(m)), "parameters": {"weight": w}}
            for m, w in zip(M, weights, strict=True)
        ],
    )
    job.pop("dtype")
    served = daemon.client().submit_merge(job).result(timeout=120)
    for k, v in cli.items():
        assert torch.equal(notebook[k], v), f"npsfuse.merge: {k}"
        assert torch.equal(served[k], v), f"daemon: {k}"
    want = _run_mergekit(conf, tmp_path / "mk")
    assert max(_ulps(cli[k], want[k]) for k in want) == 0


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"density": {"value": [0.3, 1.5]}}, "density must lie in (0, 1], got 1.5"),
        ({"density": [{"filter": "mlp"}]}, "density condition 0 has no value"),
        (
            {"density": {"value": [0.3, 0.5]}, "scope": "global"},
            "density varies by tensor (a gradient or filter list), which ties cannot take",
        ),
        ({"seed": [1, 2]}, "seed must be a number, got [1 2]"),
    ],
)
def test_bad_per_tensor_forms_are_refused_in_every_door(
    llama: dict[str, Any], tmp_path: Path, kw: dict[str, Any], words: str
) -> None:
    """The same problem, with the same words, from npsfuse.merge and a
    YAML config (the daemon parses configs as the CLI does)."""
    B, M = llama["base"], llama["ft"]
    with pytest.raises(
        ValueError,
        match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]"),
    ):
        npsfuse.merge(B, M, "ties", **kw)
    params = {k: v for k, v in kw.items() if k not in ("scope", "seed")}
    top = {k: v for k, v in kw.items() if k in ("scope", "seed")}
    conf = {
        "merge_method": "ties",
        "base_model": B,
        "models": _models(M),
        "parameters": params,
        **top,
    }
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode != 0
    assert words in r.stderr


def _multislerp64(base: Any, models: list[Any], w: list[float], normalize: bool) -> Any:
    """mergekit's multislerp formula in float64 (the weights float32 and
    normalized in float32, as mergekit builds them)."""
    x = torch.stack([(m - base).double().reshape(-1) for m in models])
    ws = torch.tensor(w, dtype=torch.float32)
    ws = (ws / ws.sum() if normalize else ws).double()
    eps = 1e-8
    n = x.norm(dim=1)
    u = x / (n + eps)[:, None]
    mu = (ws[:, None] * u).sum(0)
    mu = mu / mu.norm()
    g = (ws[:, None] * (u - (u @ mu)[:, None] * mu)).sum(0)
    r = g.norm() + eps
    res = (mu * torch.cos(r) + g * (torch.sin(r) / r)) * (n * ws).sum()
    return res.reshape(base.shape) + base.double()


def _nuslerp64(base: Any, models: list[Any], t: float) -> Any:
    """mergekit's flattened nuslerp of the task vectors in float64."""
    x, y = ((m - base).double().reshape(-1) for m in models)
    cos = float(x @ y) / (max(x.norm().item(), 1e-7) * max(y.norm().item(), 1e-7))
    cos = min(max(cos, -1.0), 1.0)
    if 1 - cos * cos <= 1e-16:
        res = (1 - t) * x + t * y
    else:
        th = math.acos(cos)
        res = (math.sin((1 - t) * th) * x + math.sin(t * th) * y) / math.sin(th)
    return res.reshape(base.shape) + base.double()


def _karcher64(xs: list[Any], max_iter: int, tol: float) -> Any:
    """mergekit's karcher iteration in float64 over the inputs xs (models,
    then the base), equally weighted."""
    x = torch.stack([v.double().reshape(-1) for v in xs])
    n = x.norm(dim=1)
    valid = [i for i in range(len(xs)) if n[i] > tol]
    u = x[valid] / n[valid][:, None]
    a = 1.0 / len(valid)
    mean = (a * u).sum(0)
    mean = u[0].clone() if mean.norm() < tol else mean / mean.norm()
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for k in range(len(valid)):
            dot = torch.clamp(mean @ u[k], -1.0, 1.0)
            th = torch.arccos(dot)
            if th < tol:
                continue
            tangent += a * (th / torch.sin(th)) * (u[k] - dot * mean)
        tn = tangent.norm()
        if tn < tol:
            break
        mean = torch.cos(tn) * mean + torch.sin(tn) * (tangent / tn)
        if mean.norm() > tol:
            mean = mean / mean.norm()
    return (n.mean() * mean).reshape(xs[0].shape)


def _ulps64(a: Any, ref: Any, inputs: list[Any]) -> float:
    """max |a − ref| (ref in float64) in ulps of the largest of |ref| and
    the |inputs| at each entry."""
    big = torch.stack([x.float().abs() for x in [*inputs, ref.float()]]).amax(0)
    spacing = (torch.nextafter(big, torch.tensor(float("inf"))) - big).double()
    return float(((a.double() - ref).abs() / spacing).max().item())


@pytest.mark.parametrize(
    "name", ["multislerp", "multislerp_raw_weights", "karcher", "karcher_few_steps", "nuslerp"]
)
def test_multislerp_and_karcher_differences_are_mergekits_rounding(
    llama: dict[str, Any], tmp_path: Path, name: str
) -> None:
    """Explains the bounds of the multislerp and karcher cases element by
    element: against the same formula evaluated in float64, npsfuse (float64
    statistics, coefficients and combination, rounded once to float32) is
    within half an ulp (of the largest of the result and the inputs) on every
    entry, i.e. it is the float64 value correctly rounded, while mergekit's
    float32 chain (norms, quotients, sums of unit vectors, its tangent
    vector, which is exactly zero for multislerp, as rounding noise) is off
    by up to the case's bound: that is where the two differ."""
    conf, bound = _cases(llama)[name]
    want = _run_mergekit(conf, tmp_path / "mk")
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode == 0, r.stderr
    got = _load(tmp_path / "np")
    base = _load(Path(conf["base_model"]))
    xs = [_load(Path(m["model"])) for m in conf["models"]]
    p = conf.get("parameters", {})
    worst_np = worst_mk = 0.0
    for k in want:
        models = [x[k] for x in xs]
        if conf["merge_method"] == "nuslerp":
            # npsfuse's weights are float32: t from their float32 values
            w = torch.tensor([m["parameters"]["weight"] for m in conf["models"]]).double()
            ref = _nuslerp64(base[k], models, float(w[1] / w.sum()))
        elif conf["merge_method"] == "multislerp":
            w = [m.get("parameters", {}).get("weight", 1.0) for m in conf["models"]]
            ref = _multislerp64(base[k], models, w, p.get("normalize_weights", True))
        else:
            ref = _karcher64([*models, base[k]], p.get("max_iter", 10), p.get("tol", 1e-5))
        inputs = [*models, base[k]]
        worst_np = max(worst_np, _ulps64(got[k], ref, inputs))
        worst_mk = max(worst_mk, _ulps64(want[k], ref, inputs))
    assert worst_np <= 0.501, f"npsfuse is {worst_np} ulps from the float64 value"
    assert worst_mk <= bound, f"mergekit is {worst_mk} ulps from the float64 value"


def _sce(base: Any, models: list[Any], topk: float, f64: bool) -> Any:
    """mergekit's sce in its float32 operations, with the weights
    mean(τ_t²) / Σ mean(τ_s²) from float32 sums (torch, as mergekit) or
    float64 sums rounded to float32 (as npsfuse)."""
    from mergekit.merge_methods.sce import sce_mask

    tv = torch.stack([m - base for m in models])
    if topk < 1:
        tv = tv * sce_mask(tv, topk, tv.dtype).unsqueeze(0)
    if f64:
        ms = tv.double().square().reshape(len(models), -1).mean(dim=1)
        total = float(ms.sum())
        w = ms / total if abs(total) >= 1e-6 else torch.ones(len(models)) / len(models)
        w = w.float()
    else:
        ms = tv.square().reshape(len(models), -1).mean(dim=1)
        total = ms.sum().item()
        w = ms / total if abs(total) >= 1e-6 else torch.ones_like(ms) / len(models)
    majority = (tv.sum(dim=0) >= 0).to(tv.dtype) * 2 - 1
    agree = (tv.sign() == majority).to(tv.dtype)
    ew = w.reshape(-1, *([1] * base.dim())) * agree
    return base + (tv * ew).sum(dim=0) / ew.sum(dim=0).clamp(min=1e-6)


@pytest.mark.parametrize("name", ["sce", "sce_select_topk"])
def test_sce_differences_are_its_weights(llama: dict[str, Any], tmp_path: Path, name: str) -> None:
    """Explains sce's ulps element by element: the same entries are
    selected (the most variable across the task vectors) and erased, and
    with its own weights each (mergekit's from float32 sums, npsfuse's from
    float64 sums), the same float32 computation gives mergekit's result and
    npsfuse's, bit for bit."""
    conf, _ = _cases(llama)[name]
    topk = conf.get("parameters", {}).get("select_topk", 1.0)
    want = _run_mergekit(conf, tmp_path / "mk")
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode == 0, r.stderr
    got, base = _load(tmp_path / "np"), _load(Path(conf["base_model"]))
    xs = [_load(Path(m["model"])) for m in conf["models"]]
    for k in want:
        models = [x[k] for x in xs]
        assert torch.equal(want[k], _sce(base[k], models, topk, f64=False)), f"mergekit: {k}"
        assert torch.equal(got[k], _sce(base[k], models, topk, f64=True)), f"npsfuse: {k}"


def test_arcee_fusion_matches_mergekit_but_at_its_fence(
    llama: dict[str, Any], tmp_path: Path
) -> None:
    """arcee_fusion keeps θ₁'s entries whose importance |θ₁ − θ₀|·KL(row)
    reaches Tukey's fence, θ₀'s elsewhere. mergekit computes the softmaxes
    and the row KLs (tiny differences of nearly equal distributions) in
    float32, npsfuse in float64: the importances agree to about 1e-4
    relative, so an entry within that of the fence may be chosen
    differently. Element by element: every entry equals mergekit's except
    such entries (at most 2 per tensor), and there each is the other
    model's value; every merged entry is θ₀ or θ₀ + (θ₁ − θ₀)."""
    from mergekit.merge_methods.arcee_fusion import DynamicThresholdFusion, _compute_importance

    B, M = llama["base"], llama["ft"]
    conf = {
        "merge_method": "arcee_fusion",
        "base_model": B,
        "models": [{"model": M[0]}],
        "dtype": "float32",
    }
    want = _run_mergekit(conf, tmp_path / "mk")
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode == 0, r.stderr
    got, base, x = _load(tmp_path / "np"), _load(Path(B)), _load(Path(M[0]))
    flips = 0
    for k in want:
        b, ft = base[k], x[k]
        fused = b + (ft - b)
        assert bool(((got[k] == b) | (got[k] == fused)).all()), k
        imp = _compute_importance(ft, b)
        _, fence = DynamicThresholdFusion().compute_fusion_mask(imp)
        differ = got[k] != want[k]
        assert int(differ.sum()) <= 2, f"{k}: {int(differ.sum())} entries differ"
        near = ((imp - fence).abs() <= 1e-3 * fence.abs()).reshape(differ.shape)
        assert bool(near[differ].all()), f"{k}: an entry away from the fence differs"
        flips += int(differ.sum())
    assert flips <= 8, flips


@pytest.fixture(scope="session")
def llama_lora(llama: dict[str, Any]) -> str:
    """A PEFT LoRA adapter for the base (random B, rsLoRA, a rank pattern)."""
    peft = pytest.importorskip("peft")
    base = transformers.LlamaForCausalLM.from_pretrained(llama["base"]).float()
    torch.manual_seed(5)
    pm = peft.get_peft_model(base, peft.LoraConfig(
        r=4, lora_alpha=8, use_rslora=True, init_lora_weights=False,
        target_modules=["q_proj", "v_proj", "down_proj"], rank_pattern={"down_proj": 2}))
    out = llama["root"] / "lora"
    pm.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_model_plus_lora_matches_mergekit(
    llama: dict[str, Any], llama_lora: str, tmp_path: Path, method: str
) -> None:
    """`model+lora` (#14 item 5): mergekit merges the adapter with PEFT
    (merge_and_unload) into a cache folder and merges that; npsfuse merges
    it on the fly, bit for bit the same weights, so the results agree as for
    plain models (the same bound as test_deterministic_methods_match_mergekit:
    bit for bit)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    params = {"weight": 0.7, **({"density": 0.5} if method == "ties" else {})}
    conf = {"merge_method": method, "base_model": llama["base"], "dtype": "float32",
            "models": [{"model": llama["ft"][0], "parameters": params},
                       {"model": f"{llama['base']}+{llama_lora}", "parameters": params}]}
    run_merge(MergeConfiguration.model_validate(conf), str(tmp_path / "mk"),
              options=MergeOptions(copy_tokenizer=False, quiet=True, random_seed=0,
                                   write_model_card=False,
                                   lora_merge_cache=str(tmp_path / "cache")))
    want = _load(tmp_path / "mk")
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode == 0, r.stderr
    got = _load(tmp_path / "np")
    assert set(got) == set(want)
    factors = safetensors_torch.load_file(Path(llama_lora) / "adapter_model.safetensors")
    assert all(t.any() for t in factors.values()), "a zero factor: the adapter changes nothing"
    worst = max((_ulps(got[k], want[k]), k) for k in want)
    assert worst[0] == 0, f"{method}: {worst[0]} ulps at {worst[1]}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".npsfuse-inputs")]
