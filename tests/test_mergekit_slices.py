"""Differential test of ``slices:`` configs and ``passthrough`` against
mergekit 0.1.5 (issue #14, item 1).

Tiny random Llama and Mistral models (4 layers, float32 safetensors) are
stacked and merged slice by slice by mergekit (in process) and by
``npsfuse merge`` (its CLI) from the same YAML. Passthrough and linear
with power-of-two weights compute the same float32 operations in both and
must agree bit for bit; slerp's coefficients are float64 in npsfuse and
float32 in mergekit (see test_mergekit_compat), so there each tensor must
equal, bit for bit, the float32 combination of its own coefficients at the
layer position mergekit gives it inside its slice, and the two stay within
the 4 input ulps the whole-model slerp case allows.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_daemon import daemon, make_daemon, npsfused_bin  # noqa: F401  (the daemon fixtures)
from test_mergekit_compat import _input_ulps, _load, _run_mergekit, _run_npsfuse, _slerp, _ulps

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("mergekit")

N_LAYERS = 4


@pytest.fixture(scope="module", params=["llama", "mistral"])
def family(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A base and three fine-tunes (τ ~ 0.02·N(0, 1)) of one architecture."""
    root = tmp_path_factory.mktemp(f"slices_{request.param}")
    kw = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    if request.param == "llama":
        cfg, cls = transformers.LlamaConfig(**kw), transformers.LlamaForCausalLM
    else:
        cfg, cls = transformers.MistralConfig(**kw), transformers.MistralForCausalLM
    torch.manual_seed(5)
    base = cls(cfg).float()
    base.save_pretrained(root / "base", safe_serialization=True)
    sd = {k: v.clone() for k, v in base.state_dict().items()}
    for i in range(3):
        g = torch.Generator().manual_seed(10 + i)
        m = cls(cfg).float()
        m.load_state_dict({k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in sd.items()})
        m.save_pretrained(root / f"ft{i}", safe_serialization=True)
    return {"base": str(root / "base"), "ft": [str(root / f"ft{i}") for i in range(3)]}


def _src(model: str, lo: int, hi: int, **params: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"model": model, "layer_range": [lo, hi]}
    if params:
        s["parameters"] = params
    return s


def _both(conf: dict[str, Any], tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(npsfuse's tensors, mergekit's) for conf, after checking that both
    wrote the same tensor names and the same layer count in config.json."""
    want = _run_mergekit(conf, tmp_path / "mk")
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode == 0, r.stderr
    got = _load(tmp_path / "np")
    assert sorted(got) == sorted(want)
    layers = sum(hi - lo for s in conf["slices"] for lo, hi in [s["sources"][0]["layer_range"]])
    for side in ("np", "mk"):
        cfg = json.loads((tmp_path / side / "config.json").read_text())
        assert cfg["num_hidden_layers"] == layers, side
    return got, want


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else None


def _renamed(name: str, layer: int) -> str:
    parts = name.split(".")
    parts[2] = str(layer)
    return ".".join(parts)


def test_passthrough_frankenmerge_matches_mergekit(family: dict[str, Any], tmp_path: Path) -> None:
    """Layers 0–2 of A then 1–3 of B: six layers, A's embeddings, B's final
    norm and LM head, every tensor bit for bit mergekit's and the source's."""
    A, B = family["ft"][0], family["ft"][1]
    conf = {
        "merge_method": "passthrough",
        "dtype": "float32",
        "slices": [{"sources": [_src(A, 0, 3)]}, {"sources": [_src(B, 1, 4)]}],
    }
    got, want = _both(conf, tmp_path)
    assert max(_ulps(got[k], want[k]) for k in want) == 0
    a, b = _load(Path(A)), _load(Path(B))
    assert len({_layer(k) for k in got} - {None}) == 6
    for k, v in got.items():
        i = _layer(k)
        if i is None:
            src = a if "embed" in k else b
            assert torch.equal(v, src[k]), k
        else:
            src, j = (a, i) if i < 3 else (b, i - 3 + 1)
            assert torch.equal(v, src[_renamed(k, j)]), k


SCALE_FILTER = [{"filter": "o_proj", "value": 0.0}, {"value": 1.3}]


def test_passthrough_scale_matches_mergekit(family: dict[str, Any], tmp_path: Path) -> None:
    """scale, as a number and as a filter list, multiplies in float32 as
    PyTorch does (0 ulps), and a source without it is passed through."""
    A, B = family["ft"][0], family["ft"][2]
    conf = {
        "merge_method": "passthrough",
        "dtype": "float32",
        "slices": [
            {"sources": [_src(A, 0, 2, scale=0.7)]},
            {"sources": [_src(B, 2, 4)]},
            {"sources": [_src(A, 3, 4, scale=SCALE_FILTER)]},
        ],
    }
    got, want = _both(conf, tmp_path)
    assert max(_ulps(got[k], want[k]) for k in want) == 0
    a = _load(Path(A))
    k = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(got[k], a[k] * 0.7)
    assert not got["model.layers.4.self_attn.o_proj.weight"].any()


T_GRADIENT = [
    {"filter": "self_attn", "value": [0.0, 0.5, 1.0]},
    {"filter": "mlp", "value": [1.0, 0.5, 0.0]},
    {"value": 0.3},
]


def _t_at(name: str, pos: float, setting: list[dict[str, Any]]) -> float:
    """mergekit's value of a filter list at layer position pos."""
    for cond in setting:
        if "filter" not in cond or cond["filter"] in name:
            v = cond["value"]
            if not isinstance(v, list):
                return float(v)
            s = pos * (len(v) - 1)
            i0 = int(s)
            i1 = min(len(v) - 1, i0 + 1)
            f = s - i0
            return (1 - f) * v[i0] + f * v[i1]
    raise AssertionError(name)


def test_slerp_gradient_runs_over_each_slice(family: dict[str, Any], tmp_path: Path) -> None:
    """slerp with a t gradient and filters over two slices of the base and a
    fine-tune (the base's layers as a source, as mergekit needs): each
    output layer k of a slice of n layers sits at t = k/(n−1) of its slice,
    the embeddings and head at 0, as mergekit plans them."""
    base, ft = family["base"], family["ft"][0]
    conf = {
        "merge_method": "slerp",
        "base_model": base,
        "dtype": "float32",
        "parameters": {"t": T_GRADIENT},
        "slices": [
            {"sources": [_src(base, 0, 3), _src(ft, 0, 3)]},
            {"sources": [_src(ft, 1, 4), _src(base, 1, 4)]},  # the base needs not come first
        ],
    }
    got, want = _both(conf, tmp_path)
    x, y = _load(Path(base)), _load(Path(ft))
    for k, v in got.items():
        i = _layer(k)
        if i is None:
            pos, src = 0.0, k
        elif i < 3:
            pos, src = i / 2, k
        else:
            pos, src = (i - 3) / 2, _renamed(k, i - 3 + 1)
        t = _t_at(k, pos, T_GRADIENT)
        assert torch.equal(v, _slerp(x[src], y[src], t, f64=True)), f"npsfuse {k} at t={t}"
        assert torch.equal(want[k], _slerp(x[src], y[src], t, f64=False)), f"mergekit {k} at t={t}"
        assert _input_ulps(v, want[k], [x[src], y[src]]) <= 4, k


def test_a_merge_method_per_slice(family: dict[str, Any], tmp_path: Path) -> None:
    """slerp (t gradient) for the first slice, linear for the second:
    npsfuse's one run equals mergekit's two runs (one per slice, which is
    how mergekit 0.1.5, with one method per config, can compute it), with
    the embeddings from the first slice's merge and the head from the
    last's."""
    base, M = family["base"], family["ft"]
    s0 = {"sources": [_src(base, 0, 2), _src(M[0], 0, 2)], "parameters": {"t": [0.2, 0.9]}}
    s1 = {
        "sources": [_src(M[1], 1, 4, weight=0.5), _src(M[2], 1, 4, weight=2.0)],
        "parameters": {"normalize": True},
    }
    conf = {
        "merge_method": "slerp",
        "base_model": base,
        "dtype": "float32",
        "slices": [s0, dict(s1, merge_method="linear")],
    }
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode == 0, r.stderr
    got = _load(tmp_path / "np")
    assert json.loads((tmp_path / "np" / "config.json").read_text())["num_hidden_layers"] == 5
    one = {"merge_method": "slerp", "base_model": base, "dtype": "float32", "slices": [s0]}
    first = _run_mergekit(one, tmp_path / "mk0")
    two = {"merge_method": "linear", "dtype": "float32", "slices": [s1]}
    second = _run_mergekit(two, tmp_path / "mk1")
    x, y = _load(Path(base)), _load(Path(M[0]))
    want: dict[str, Any] = {}
    for k, v in first.items():
        if _layer(k) is not None or "embed" in k:
            want[k] = v
    for k, v in second.items():
        i = _layer(k)
        if i is not None:
            want[_renamed(k, i + 2)] = v
        elif "embed" not in k:
            want[k] = v
    assert sorted(got) == sorted(want)
    for k in want:
        i = _layer(k)
        if (i is not None and i >= 2) or (i is None and "embed" not in k):
            # linear with power-of-two weights: the same float32 operations
            assert _ulps(got[k], want[k]) == 0, k
        else:
            t = 0.2 + 0.7 * (i if i is not None else 0)
            assert torch.equal(got[k], _slerp(x[k], y[k], t, f64=True)), k
            assert _input_ulps(got[k], want[k], [x[k], y[k]]) <= 4, k


@pytest.mark.parametrize(
    ("slices", "words"),
    [
        (
            [{"sources": [_src("A", 0, 3)]}, {"sources": [_src("B", 2, 6)]}],
            "slices[1].sources[0]: layer_range [2, 6] reaches past the 4 layers of",
        ),
        (
            [{"sources": [_src("A", 0, 2), _src("B", 0, 3)]}],
            "slices[0].sources[1]: layer_range [0, 3] spans 3 layers but slices[0].sources[0] "
            "spans 2",
        ),
        (
            [{"sources": [_src("A", 0, 2)]}, {"sources": [_src("B", 3, 3)]}],
            "slices[1].sources[0]: layer_range [3, 3] is empty or negative",
        ),
        (
            [{"sources": [_src("A", 0, 2), _src("B", 0, 2)]}],
            "slices[0] (passthrough): passthrough merges exactly 1 models, got 2",
        ),
        (
            [{"sources": [{"model": "A", "layer_range": [0]}]}],
            "slices[0].sources[0]: layer_range must be two whole numbers [START, END]",
        ),
    ],
)
def test_bad_slices_name_the_slice_and_source(
    family: dict[str, Any], tmp_path: Path, slices: list[dict[str, Any]], words: str
) -> None:
    paths = {"A": family["ft"][0], "B": family["ft"][1]}
    slices = copy.deepcopy(slices)
    for s in slices:
        for src in s["sources"]:
            src["model"] = paths[src["model"]]
    conf = {"merge_method": "passthrough", "dtype": "float32", "slices": slices}
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode != 0
    assert words in r.stderr, r.stderr
    assert not (tmp_path / "np").exists()


def test_slice_base_must_be_a_source(family: dict[str, Any], tmp_path: Path) -> None:
    conf = {
        "merge_method": "task_arithmetic",
        "base_model": family["base"],
        "slices": [{"sources": [_src(family["ft"][0], 0, 4), _src(family["ft"][1], 0, 4)]}],
    }
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode != 0
    assert "slices[0]: base_model" in r.stderr, r.stderr
    assert "is not among the slice's sources" in r.stderr, r.stderr
    both = dict(conf, models=[{"model": family["ft"][0]}])
    r = _run_npsfuse(both, tmp_path / "np2")
    assert "give either models or slices, not both" in r.stderr, r.stderr


def test_daemon_runs_slices_like_the_cli(family: dict[str, Any], tmp_path: Path, daemon) -> None:  # noqa: F811
    """The daemon's merge job (out_dir) reads the same slices config, its
    sources' paths resolved inside the data roots, and writes the CLI's
    tensors and layer count bit for bit; without out_dir it says a slices
    merge writes a folder."""
    A, B = (shutil.copytree(family["ft"][i], daemon.root / f"src{i}") for i in range(2))
    conf = {
        "merge_method": "passthrough",
        "slices": [{"sources": [_src(str(A), 0, 3)]}, {"sources": [_src(str(B), 1, 4, scale=0.5)]}],
    }
    r = _run_npsfuse(conf, tmp_path / "np")
    assert r.returncode == 0, r.stderr
    cli = _load(tmp_path / "np")
    job = copy.deepcopy(conf)
    out = daemon.client().submit_merge(job, out_dir=daemon.root / "sliced").result(timeout=120)
    served = _load(Path(out))
    assert json.loads((Path(out) / "config.json").read_text())["num_hidden_layers"] == 6
    assert sorted(served) == sorted(cli)
    for k, v in cli.items():
        assert torch.equal(served[k], v), k
    with pytest.raises(Exception, match="a slices merge writes a checkpoint folder: give out_dir"):
        daemon.client().submit_merge(job).result(timeout=60)
