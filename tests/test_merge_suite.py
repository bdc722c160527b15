"""The second group of merge methods against the NumPy reference.

``breadcrumbs``, ``breadcrumbs_ties``, ``della``, ``della_linear``,
``consensus_ta``, ``consensus_ties``, ``model_stock``, ``slerp``, ``pcb`` and
``neuro`` through ``npsfuse.merge``, compared entry by entry with
:mod:`reference_suite` on random state dicts and on a tiny GPT-2 saved as a
Hugging Face folder (whose Conv1D weights are stored transposed); plus the
method-specific parameters, their errors and the merge report.
"""

from __future__ import annotations

from pathlib import Path

import npsfuse
import numpy as np
import pytest
import reference_suite as rs
import torch
from conftest import make_family, to_numpy
from npsfuse.merging import MergeResult, matches

StateDict = dict[str, torch.Tensor]

#: A conv kernel, a matrix flagged transposed, a 1-D tensor and a matrix
#: large enough for several engine chunks.
SHAPES: dict[str, tuple[int, ...]] = {
    "embed.weight": (130, 300),
    "blk.0.mlp.c_fc.weight": (48, 64),
    "blk.0.mlp.c_fc.bias": (64,),
    "conv.weight": (6, 3, 3, 3),
    "head.weight": (3, 5, 7),
}
TRANSPOSED = ["blk.0.mlp.c_fc.weight"]

#: Largest |npsfuse − reference| allowed per method (values are O(1)). The
#: masks and coefficients are the same computations in float32 as in the
#: reference; PCB's exp/tanh and NeuroMerging's eigen/SVD route differ in
#: the last bits.
ATOL: dict[str, float] = {m: 1e-6 for m in rs.METHODS} | {"pcb": 1e-5, "neuro": 1e-5}


def _n_models(method: str) -> int:
    return 2 if method == "slerp" else 3


def _compare(got: StateDict, ref: dict[str, np.ndarray], atol: float) -> None:
    assert list(got) == list(ref)
    for k, r in ref.items():
        g = got[k].float().numpy()
        assert g.shape == r.shape, k
        np.testing.assert_allclose(g, r, rtol=0, atol=atol, err_msg=k)


@pytest.fixture(scope="module")
def fam() -> tuple[StateDict, list[StateDict]]:
    return make_family(SHAPES, 3, seed=3, delta=0.1)


@pytest.mark.parametrize("scope", ["tensor", "global"])
@pytest.mark.parametrize("method", rs.METHODS)
def test_matches_reference(method: str, scope: str, fam) -> None:
    base, models = fam
    models = models[: _n_models(method)]
    got = npsfuse.merge(base, models, method, scope=scope, transposed=TRANSPOSED, seed=7)
    ref = rs.merge(to_numpy(base), [to_numpy(m) for m in models], method, scope=scope,
                   transposed=TRANSPOSED, seed=7)
    _compare(got, ref, ATOL[method])


# Non-default values of every parameter a method reads.
PARAMS: dict[str, dict] = {
    "breadcrumbs": {"density": 0.3, "gamma": 0.05, "lam": 0.8, "normalize": True},
    "breadcrumbs_ties": {"density": 0.4, "gamma": 0.1, "normalize": True},
    "della": {"density": 0.5, "epsilon": 0.3, "lam": 1.2, "normalize": False},
    "della_linear": {"density": 0.3, "epsilon": 0.05, "normalize": True},
    "consensus_ta": {"k": 1, "tall_lambda": [0.2, 0.5, 0.9], "normalize": True, "lam": 0.5},
    "consensus_ties": {"density": 0.5, "k": 3, "tall_lambda": 0.1},
    "model_stock": {},
    "slerp": {"t": 0.3},
    "pcb": {"density": 0.5, "lam": 0.9},
    "neuro": {"mask_rate": 0.7, "lam1": 0.5, "lam2": 2.0, "lam": 0.9},
}


@pytest.mark.parametrize("method", rs.METHODS)
def test_parameters_and_weights(method: str, fam) -> None:
    base, models = fam
    models = models[: _n_models(method)]
    # weights only where the method reads them (model_stock and slerp refuse them)
    w = {} if method in ("model_stock", "slerp") else {"weights": [0.5, 1.5, 1.0][: len(models)]}
    kw = PARAMS[method]
    got = npsfuse.merge(base, models, method, transposed=TRANSPOSED, seed=2, **w, **kw)
    ref_kw = {k: v for k, v in kw.items()}
    ref = rs.merge(to_numpy(base), [to_numpy(m) for m in models], method,
                   transposed=TRANSPOSED, seed=2, **w, **ref_kw)
    _compare(got, ref, ATOL[method])


@pytest.mark.parametrize("method", rs.METHODS)
def test_bfloat16_inputs(method: str) -> None:
    base, models = make_family(SHAPES, _n_models(method), seed=4, delta=0.1, dtype=torch.bfloat16)
    got = npsfuse.merge(base, models, method, transposed=TRANSPOSED)
    ref = rs.merge(to_numpy(base), [to_numpy(m) for m in models], method, transposed=TRANSPOSED)
    for k, r in ref.items():
        assert got[k].dtype == torch.bfloat16
        want = torch.from_numpy(r).to(torch.bfloat16).float()
        # One bfloat16 step at most (the float32 results may straddle a
        # rounding boundary).
        np.testing.assert_allclose(got[k].float().numpy(), want.numpy(), rtol=2**-7, atol=1e-4,
                                   err_msg=k)


def _gpt2_family(root: Path, n_models: int) -> tuple[Path, list[Path]]:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    base_dir = root / "base"
    model.save_pretrained(base_dir)
    dirs = []
    for i in range(n_models):
        g = torch.Generator().manual_seed(100 + i)
        ft = transformers.GPT2LMHeadModel(cfg)
        with torch.no_grad():
            for (_, p), (_, q) in zip(model.named_parameters(), ft.named_parameters(), strict=True):
                q.copy_(p + 0.02 * torch.randn(p.shape, generator=g))
        d = root / f"ft{i}"
        ft.save_pretrained(d)
        dirs.append(d)
    return base_dir, dirs


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> tuple[Path, list[Path]]:
    return _gpt2_family(tmp_path_factory.mktemp("gpt2"), 3)


def _load(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@pytest.mark.parametrize("method", rs.METHODS)
def test_tiny_gpt2_folder(method: str, gpt2) -> None:
    base_dir, dirs = gpt2
    dirs = dirs[: _n_models(method)]
    got = npsfuse.merge(base_dir, dirs, method, seed=5)
    base = _load(base_dir)
    models = [_load(d) for d in dirs]
    flagged = [k for k in base if any(k.endswith(c) for c in CONV1D)]
    assert len(flagged) == 8
    ref = rs.merge(base, models, method, transposed=flagged, seed=5)
    _compare(got, ref, ATOL[method])
    if method in ("della", "neuro"):
        # The orientation matters for the row-wise methods: the folder's
        # model_type made npsfuse see the Conv1D weights as (out, in).
        plain = rs.merge(base, models, method, seed=5)
        k = "transformer.h.0.mlp.c_fc.weight"
        assert np.abs(plain[k] - ref[k]).max() > 1e-4
        untouched = npsfuse.merge(base_dir, dirs, method, seed=5, transposed=[])
        np.testing.assert_allclose(untouched[k].numpy(), plain[k], rtol=0, atol=ATOL[method])


def test_transposed_patterns() -> None:
    assert matches("transformer.h.3.mlp.c_fc.weight", "mlp.c_fc.weight")
    assert matches("transformer.h.3.mlp.c_fc.weight", "h.*.mlp.c_fc.weight")
    assert matches("mlp.c_fc.weight", "mlp.c_fc.weight")
    assert not matches("transformer.h.3.mlp.c_fc.bias", "mlp.c_fc.weight")
    assert not matches("transformer.h.3.xmlp.c_fc.weight", "mlp.c_fc.weight")


def test_transposed_module_is_detected() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(1)
    base = transformers.GPT2LMHeadModel(cfg)
    sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    fts = [{k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
            for k, v in sd.items()} for _ in range(2)]
    k = "transformer.h.0.mlp.c_fc.weight"
    from_module = npsfuse.merge(base, fts, "della")
    conv1d = ["mlp.c_fc.weight", "attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_proj.weight"]
    explicit = npsfuse.merge(sd, fts, "della", transposed=conv1d)
    assert torch.equal(from_module[k], explicit[k])
    assert not torch.equal(npsfuse.merge(sd, fts, "della")[k], explicit[k])


def test_report() -> None:
    base, models = make_family(SHAPES, 3, seed=5, delta=0.1)
    nb, nm = to_numpy(base), [to_numpy(m) for m in models]
    got = npsfuse.merge(base, models, "model_stock")
    assert isinstance(got, MergeResult) and isinstance(got, dict)
    want: dict = {}
    rs.merge(nb, nm, "model_stock", report=want)
    assert set(got.report["t"]) == set(SHAPES)
    for k, t in want["t"].items():
        assert got.report["t"][k] == pytest.approx(t, abs=1e-12)
    s = npsfuse.merge(base, models[:2], "slerp", t=0.25)
    assert set(s.report) == {"omega", "lerp"}
    assert all(0 < om < np.pi for om in s.report["omega"].values())
    assert not any(s.report["lerp"].values())
    assert npsfuse.merge(base, models, "ties").report == {}


def test_slerp_endpoints_and_collinear() -> None:
    base, models = make_family(SHAPES, 2, seed=6)
    a, b = models
    r0 = npsfuse.merge(base, [a, b], "slerp", t=0.0)
    r1 = npsfuse.merge(base, [a, b], "slerp", t=1.0)
    for k in SHAPES:
        np.testing.assert_allclose(r0[k].numpy(), a[k].numpy(), atol=1e-6)
        np.testing.assert_allclose(r1[k].numpy(), b[k].numpy(), atol=1e-6)
    twice = {k: 2 * v for k, v in a.items()}
    r = npsfuse.merge(base, [a, twice], "slerp", t=0.5)
    assert all(r.report["lerp"].values())
    for k in SHAPES:
        np.testing.assert_allclose(r[k].numpy(), 1.5 * a[k].numpy(), rtol=1e-6, atol=1e-6)


def test_default_normalize_is_mergekits() -> None:
    base, models = make_family(SHAPES, 3, seed=8)
    for method, norm in [("della", True), ("della_linear", False), ("breadcrumbs", False),
                         ("breadcrumbs_ties", False), ("consensus_ta", False),
                         ("consensus_ties", True)]:
        a = npsfuse.merge(base, models, method, weights=[0.5, 1, 2])
        b = npsfuse.merge(base, models, method, weights=[0.5, 1, 2], normalize=norm)
        c = npsfuse.merge(base, models, method, weights=[0.5, 1, 2], normalize=not norm)
        assert all(torch.equal(a[k], b[k]) for k in a), method
        assert not all(torch.equal(a[k], c[k]) for k in a), method


@pytest.mark.parametrize(
    ("method", "n", "kw", "match"),
    [
        ("slerp", 3, {}, "exactly 2 models, got 3"),
        ("slerp", 2, {"t": 1.5}, r"t must lie in \[0, 1\]"),
        ("ties", 3, {"gamma": 0.1}, r"gamma is not a parameter of ties \(it belongs"),
        ("breadcrumbs", 3, {"epsilon": 0.1}, r"epsilon is not a parameter of breadcrumbs"),
        ("breadcrumbs", 3, {"gamma": 1.0}, r"gamma must lie in \[0, 1\)"),
        ("della", 3, {"epsilon": 0.5}, "density ± epsilon"),
        ("della", 3, {"epsilon": -1}, "epsilon must be ≥ 0, got -1"),
        ("model_stock", 1, {}, "at least 2 fine-tuned models"),
        ("consensus_ta", 3, {"k": -1}, "k must be ≥ 0, got -1"),
        ("consensus_ta", 3, {"k": 1.5}, "k must be a whole number, got 1.5"),
        ("consensus_ties", 3, {"tall_lambda": [0.1, 0.2]}, "2 values of tall_lambda given for 3"),
        ("neuro", 3, {"mask_rate": 1.0}, r"mask_rate must lie in \[0, 1\)"),
        ("neuro", 3, {"lam2": 0.0}, "lam2 must be > 0, got 0"),
        ("neuro", 3, {"lam1": float("nan")}, "lam1 must be a finite number"),
        ("pcb", 3, {"density": 0.0}, r"density must lie in \(0, 1\]"),
    ],
)
def test_bad_parameters(method: str, n: int, kw: dict, match: str) -> None:
    base, models = make_family({"w": (4, 5)}, n, seed=9)
    with pytest.raises(ValueError, match=match):
        npsfuse.merge(base, models, method, **kw)


def test_unused_base_for_slerp_still_fixes_names() -> None:
    base, models = make_family(SHAPES, 2, seed=10)
    shuffled = {k: torch.zeros_like(v) for k, v in reversed(list(base.items()))}
    a = npsfuse.merge(base, models, "slerp")
    b = npsfuse.merge(shuffled, models, "slerp")
    assert list(b) == list(shuffled)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["breadcrumbs_ties", "della", "pcb"])
def test_per_model_densities(method: str, fam) -> None:
    base, models = fam
    models = models[:3]
    dens = [0.2, 0.5, 0.8]
    got = npsfuse.merge(base, models, method, density=dens, transposed=TRANSPOSED, seed=3)
    ref = rs.merge(to_numpy(base), [to_numpy(m) for m in models], method, density=dens,
                   transposed=TRANSPOSED, seed=3)
    _compare(got, ref, ATOL[method])
    single = npsfuse.merge(base, models, method, density=0.2, transposed=TRANSPOSED, seed=3)
    assert any(not torch.equal(got[k], single[k]) for k in got)


def test_per_model_densities_sparsify_each_model_alone(fam) -> None:
    # magnitude_prune without normalisation is θ₀ + Σ τ̂_t: each model's top-k
    # at its own density, as when merging it alone.
    base, models = fam
    dens = [0.1, 0.4, 0.7]
    got = npsfuse.merge(base, models[:3], "magnitude_prune", density=dens, normalize=False)
    alone = [npsfuse.merge(base, [m], "magnitude_prune", density=d, normalize=False)
             for m, d in zip(models[:3], dens, strict=True)]
    for k, b in base.items():
        want = b + sum(a[k] - b for a in alone)
        torch.testing.assert_close(got[k], want, rtol=0, atol=1e-6)


def test_per_model_densities_are_checked(fam) -> None:
    base, models = fam
    with pytest.raises(ValueError, match="2 values of density given for 3 models"):
        npsfuse.merge(base, models[:3], "ties", density=[0.5, 0.5])
    with pytest.raises(ValueError, match=r"density of model 1 must lie in \(0, 1\], got 1.5"):
        npsfuse.merge(base, models[:3], "ties", density=[0.5, 1.5, 0.5])
