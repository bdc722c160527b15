"""The inputs users have (#18 items 8-10, #14 item 5): PEFT LoRA adapters
(folders and ``PeftModel``s) merged into their base on the fly as PEFT's
``merge_and_unload`` does, Hugging Face Hub ids resolved through a (fake,
local) cache, ``model+lora`` references, ``include=``/``exclude=``, float64
models and ``.bin`` checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import npsfuse
import pytest
import yaml

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
safetensors_torch = pytest.importorskip("safetensors.torch")

from npsfuse import _hub, _peft  # noqa: E402
from npsfuse._state import load_state_dict  # noqa: E402

warnings.filterwarnings("ignore", module="peft")


def _llama(seed: int = 0, dtype: Any = None, **kw: Any) -> Any:
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **kw,
    )
    torch.manual_seed(seed)
    m = transformers.LlamaForCausalLM(cfg).float()
    return m.to(dtype) if dtype is not None else m


def _gpt2() -> Any:
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).float()


def _clone(sd: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in sd.items()}


#: name → (model factory, LoraConfig keywords): each a PEFT feature whose
#: semantics must come out as PEFT's merge_and_unload.
CASES: dict[str, tuple[Any, dict[str, Any]]] = {
    "plain": (_llama, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
    "rslora": (_llama, {"r": 4, "lora_alpha": 8, "use_rslora": True,
                        "target_modules": ["q_proj", "down_proj"]}),
    "patterns": (_llama, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "o_proj"],
                          "rank_pattern": {"o_proj": 2},
                          "alpha_pattern": {"layers.1.self_attn.q_proj": 3}}),
    "embedding+modules_to_save": (_llama, {"r": 2, "lora_alpha": 4,
                                           "target_modules": ["embed_tokens", "k_proj"],
                                           "modules_to_save": ["lm_head"]}),
    "lora_bias": (lambda: _llama(attention_bias=True),
                  {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj"], "lora_bias": True}),
    "fan_in_fan_out (gpt2)": (_gpt2, {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"],
                                      "fan_in_fan_out": True}),
    "bfloat16 base": (lambda: _llama(dtype=torch.bfloat16),
                      {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
}


def _peft_model(name: str, tmp_path: Path) -> tuple[dict[str, Any], Any, Path]:
    """The base weights, a PeftModel with random B (init_lora_weights=False:
    a zero B would make every check pass), and its saved adapter folder."""
    factory, kw = CASES[name]
    m = factory()
    base = _clone(m.state_dict())
    torch.manual_seed(1)
    pm = peft.get_peft_model(m, peft.LoraConfig(init_lora_weights=False, **kw))
    with torch.no_grad():  # lora_bias starts at zero: make it count
        for n, p in pm.named_parameters():
            if "lora_B" in n and n.endswith("bias"):
                p.normal_()
    folder = tmp_path / "adapter"
    pm.save_pretrained(folder)
    return base, pm, folder


@pytest.mark.parametrize("name", list(CASES))
def test_adapters_give_peft_merge_and_unload_bit_for_bit(name: str, tmp_path: Path) -> None:
    base, pm, folder = _peft_model(name, tmp_path)
    from_module = _clone(load_state_dict(pm, "model 0"))
    as_base = _clone(load_state_dict(pm, "base"))
    from_folder = load_state_dict(folder, "model 0", base=base)
    want = pm.merge_and_unload().state_dict()
    changed = [k for k in want if not torch.equal(want[k], base[k])]
    assert changed, "the adapter changes nothing: the test could not fail"
    for what, got in (("PeftModel", from_module), ("folder", from_folder)):
        assert set(got) == set(want), f"{what}: {sorted(set(got) ^ set(want))[:4]}"
        bad = [k for k in want if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k])]
        assert not bad, f"{what}: {bad[:3]} differ from merge_and_unload"
    # A module with adapters given as the base counts without them.
    assert set(as_base) == set(base)
    assert all(torch.equal(as_base[k], base[k]) for k in base)


def test_merge_takes_adapter_folders_and_peft_models(tmp_path: Path) -> None:
    base, pm, folder = _peft_model("plain", tmp_path)
    base2, pm2, folder2 = _peft_model("rslora", tmp_path / "2")
    merged = [_clone(pm.merge_and_unload().state_dict()),
              _clone(pm2.merge_and_unload().state_dict())]
    want = npsfuse.merge(base, merged, "ties", density=0.5)
    got = npsfuse.merge(base, [folder, folder2], "ties", density=0.5)
    assert all(torch.equal(got[k], want[k]) for k in want)
    tau = npsfuse.task_vector(base, folder)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(tau[q], merged[0][q] - base[q])
    assert not tau["lm_head.weight"].any()


def test_peft_model_and_its_injected_base_in_one_call(tmp_path: Path) -> None:
    """The module get_peft_model injects into is the base: it counts without
    its adapters, the PeftModel with them (no zero task vector by accident)."""
    base, pm, _ = _peft_model("plain", tmp_path)
    got = npsfuse.merge(pm.get_base_model(), [pm], "task_arithmetic")
    want = npsfuse.merge(base, [_clone(pm.merge_and_unload().state_dict())], "task_arithmetic")
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def _adapter_errors(tmp_path: Path) -> dict[str, tuple[Any, Any, str]]:
    base, _, folder = _peft_model("plain", tmp_path)
    weights = folder / "adapter_model.safetensors"
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(weights.read_bytes())  # the factors without their config
    dora = tmp_path / "dora"
    dora.mkdir()
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    (dora / "adapter_model.safetensors").write_bytes(weights.read_bytes())
    other = {k.replace("layers.1.", "layers.9."): v for k, v in base.items()}
    return {
        "adapter as base": (folder, [base], "holds only the LoRA factors"),
        "factors without config": (base, [lone], "looks like a PEFT LoRA adapter"),
        "DoRA": (base, [dora], "DoRA"),
        "adapter of another model": (other, [folder], "made for another base model"),
    }


@pytest.mark.parametrize("case", ["adapter as base", "factors without config", "DoRA",
                                  "adapter of another model"])
def test_adapter_errors_say_what_is_wrong(case: str, tmp_path: Path) -> None:
    base, models, words = _adapter_errors(tmp_path)[case]
    with pytest.raises(ValueError, match=words):
        npsfuse.merge(base, models, "task_arithmetic")


# --------------------------------------------------------------------------
# include= / exclude=

def _small() -> tuple[dict[str, Any], dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    base = {n: torch.randn(4, 4, generator=g)
            for n in ("encoder.q.weight", "encoder.k.weight", "classifier.weight")}
    ft = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    return base, ft


@pytest.mark.parametrize(
    "include, exclude, merged",
    [
        (None, [r"^classifier\."], {"encoder.q.weight", "encoder.k.weight"}),
        ([r"\.q\."], None, {"encoder.q.weight"}),
        ([r"^encoder"], [r"\.k\."], {"encoder.q.weight"}),
        ("classifier", (), {"classifier.weight"}),
    ],
)
def test_include_exclude_select_what_is_merged(
    include: Any, exclude: Any, merged: set[str]
) -> None:
    base, ft = _small()
    full = npsfuse.merge(base, [ft], "task_arithmetic", lam=0.5)
    # The models need not have what is left out (another head, say).
    ft = {k: v for k, v in ft.items() if k in merged}
    got = npsfuse.merge(base, [ft], "task_arithmetic", lam=0.5, include=include, exclude=exclude)
    assert list(got) == list(base)
    for k in base:
        assert torch.equal(got[k], full[k] if k in merged else base[k]), k


@pytest.mark.parametrize("kw, words", [
    ({"include": ["("]}, "include: invalid regular expression"),
    ({"exclude": ["."]}, "select none of the base's 3 tensors"),
])
def test_include_exclude_errors(kw: dict[str, Any], words: str) -> None:
    base, ft = _small()
    with pytest.raises(ValueError, match=words):
        npsfuse.merge(base, [ft], "task_arithmetic", **kw)


# --------------------------------------------------------------------------
# float64 and .bin

def test_float64_models_are_merged_and_stay_float64() -> None:
    base, ft = _small()
    b64 = {k: v.double() for k, v in base.items()}
    f64 = {k: v.double() for k, v in ft.items()}
    got = npsfuse.merge(b64, [f64], "ties", density=0.5)
    want = npsfuse.merge(base, [ft], "ties", density=0.5)  # the same values in float32
    for k in want:
        assert got[k].dtype == torch.float64
        assert torch.equal(got[k], want[k].double()), k
    tau = npsfuse.task_vector(b64, f64)
    assert all(tau[k].dtype == torch.float64 for k in tau)
    assert npsfuse.merge(b64, [f64], "linear", dtype="bfloat16")[
        "classifier.weight"].dtype == torch.bfloat16


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def test_bin_checkpoints_load_weights_only(tmp_path: Path) -> None:
    base, ft = _small()
    single = tmp_path / "single"
    single.mkdir()
    torch.save(ft, single / "pytorch_model.bin")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = sorted(ft)
    torch.save({k: ft[k] for k in names[:1]}, sharded / "pytorch_model-00001-of-00002.bin")
    torch.save({k: ft[k] for k in names[1:]}, sharded / "pytorch_model-00002-of-00002.bin")
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {
        k: f"pytorch_model-0000{1 if i == 0 else 2}-of-00002.bin" for i, k in enumerate(names)}}))
    torch.save(base, tmp_path / "base.pt")
    want = npsfuse.merge(base, [ft], "task_arithmetic")
    for src in (single, sharded):
        got = npsfuse.merge(tmp_path / "base.pt", [src], "task_arithmetic")
        assert all(torch.equal(got[k], want[k]) for k in want), src
    evil = tmp_path / "evil"
    evil.mkdir()
    with open(evil / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    with pytest.raises(ValueError, match="weights only"):
        npsfuse.merge(base, [evil], "task_arithmetic")


# --------------------------------------------------------------------------
# Hugging Face Hub ids, through a cache laid out as huggingface_hub does

def _fake_hub_repo(cache: Path, repo: str, src: Path, commit: str, refs: tuple[str, ...]) -> None:
    """models--org--name/{refs/<ref>, snapshots/<commit>/…}, as
    huggingface_hub lays a downloaded repository out (files are real copies
    here, symlinks to blobs there; both read the same)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in src.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (root / "refs").mkdir(exist_ok=True)
    for r in refs:
        (root / "refs" / r).write_text(commit)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    base, pm, folder = _peft_model("plain", tmp_path / "src")
    m = _llama()
    m.save_pretrained(tmp_path / "src" / "base")
    ft = {k: v + 0.01 * torch.ones_like(v) for k, v in base.items()}
    m.load_state_dict(ft)
    m.save_pretrained(tmp_path / "src" / "ft")
    cache = tmp_path / "hf" / "hub"
    _fake_hub_repo(cache, "org/base", tmp_path / "src" / "base", "a" * 40, ("main",))
    _fake_hub_repo(cache, "org/ft", tmp_path / "src" / "ft", "b" * 40, ("main", "v1"))
    _fake_hub_repo(cache, "org/lora", folder, "c" * 40, ("main",))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    merged = _clone(pm.merge_and_unload().state_dict())
    return {"base": base, "ft": ft, "lora": merged, "src": tmp_path / "src"}


def test_hub_ids_resolve_through_the_cache(hub: dict[str, Any]) -> None:
    want = npsfuse.merge(hub["base"], [hub["ft"], hub["lora"]], "task_arithmetic")
    for refs in (["org/ft", "org/base+org/lora"], ["org/ft@v1", f"org/base@{'a' * 40}+org/lora"]):
        got = npsfuse.merge("org/base", refs, "task_arithmetic")
        assert all(torch.equal(got[k], want[k]) for k in want), refs


def test_a_commit_revision_needs_no_request(
    hub: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online (no HF_HUB_OFFLINE), a commit is read from the cache without a
    request: with no network here, a request would fail after retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    got = npsfuse.merge(f"org/base@{'a' * 40}", [f"org/ft@{'b' * 40}"], "task_arithmetic")
    want = npsfuse.merge(hub["base"], [hub["ft"]], "task_arithmetic")
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("ref, words", [
    ("org/missing", "does not exist locally and is not a Hugging Face Hub repository"),
    ("org/ft@v2", "HF_HUB_OFFLINE is set"),
    ("org/base+org/ft", "adapter_config.json"),
])
def test_unresolvable_references_are_named(hub: dict[str, Any], ref: str, words: str) -> None:
    with pytest.raises((FileNotFoundError, ValueError), match=words) as e:
        npsfuse.merge("org/base", [ref], "task_arithmetic")
    assert ref.split("+")[-1].split("@")[0] in str(e.value)


def test_cli_resolves_hub_ids_and_model_plus_lora(hub: dict[str, Any], tmp_path: Path) -> None:
    conf = {"merge_method": "task_arithmetic", "base_model": "org/base",
            "models": [{"model": "org/ft@v1", "parameters": {"weight": 0.5}},
                       {"model": "org/base+org/lora", "parameters": {"weight": 0.5}}]}
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(conf))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "npsfuse.cli", "merge", str(path), str(out),
                        "--quiet"], capture_output=True, text=True, check=False, env=os.environ)
    assert r.returncode == 0, r.stderr
    got = safetensors_torch.load_file(out / "model.safetensors")
    want = npsfuse.merge(hub["base"], [hub["ft"], hub["lora"]], "task_arithmetic",
                         weights=[0.5, 0.5])
    assert all(torch.equal(got[k], want[k]) for k in want)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".npsfuse-inputs")]
    assert not leftovers, leftovers


def test_hub_id_shape() -> None:
    assert _hub.is_hub_id("org/name") and _hub.is_hub_id("org/name@main")
    assert not _hub.is_hub_id("./org/name") and not _hub.is_hub_id("name")
    assert not _hub.is_hub_id("/abs/path") and not _hub.is_hub_id("org/name@a@b")
    assert _hub.split_lora("a+b") == ("a", "b")
    with pytest.raises(ValueError, match="MODEL\\+LORA"):
        _hub.split_lora("a+b+c")
    assert _peft.looks_like_adapter(["x.q_proj.lora_A.weight"])
    assert not _peft.looks_like_adapter(["x.q_proj.weight"])


def test_merge_checkpoints_takes_an_adapter_folder_as_a_model(
    hub: dict[str, Any], tmp_path: Path
) -> None:
    """An adapter folder listed as a model is BASE+ADAPTER (mergekit needs the
    `+`); without a base_model it is refused, naming the entry."""
    src = hub["src"]
    conf = {"merge_method": "task_arithmetic", "base_model": str(src / "base"),
            "models": [{"model": str(src / "adapter")}, {"model": str(src / "ft")}]}
    out = npsfuse.merge_checkpoints(conf, tmp_path / "out", quiet=True)
    got = safetensors_torch.load_file(out / "model.safetensors")
    want = npsfuse.merge(hub["base"], [hub["lora"], hub["ft"]], "task_arithmetic")
    assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match=r"models\[0\].model: .* needs a base_model"):
        npsfuse.merge_checkpoints({"merge_method": "linear", "models": conf["models"]},
                                  tmp_path / "out2", quiet=True)


@pytest.mark.parametrize("shards", [1, 2])
def test_merge_checkpoints_reads_bin_checkpoints(tmp_path: Path, shards: int) -> None:
    """Go reads safetensors only: a pickle checkpoint in a config is converted
    first (weights only), one shard at a time, and the merge is the one of
    the same weights in safetensors."""
    m = _llama()
    m.save_pretrained(tmp_path / "base")
    base = _clone(m.state_dict())
    ft = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(3))
          for k, v in base.items()}
    m.load_state_dict(ft)
    m.save_pretrained(tmp_path / "ft_st")
    pt = tmp_path / "ft_bin"  # as older transformers saved: pickles (+ an index)
    pt.mkdir()
    (pt / "config.json").write_text((tmp_path / "ft_st" / "config.json").read_text())
    names = list(ft)
    if shards == 1:
        torch.save(ft, pt / "pytorch_model.bin")
    else:
        weight_map = {}
        for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
            f = f"pytorch_model-0000{i + 1}-of-00002.bin"
            torch.save({k: ft[k] for k in part}, pt / f)
            weight_map.update(dict.fromkeys(part, f))
        (pt / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert not list(pt.glob("*.safetensors"))
    outs = {}
    for name in ("ft_st", "ft_bin"):
        conf = {"merge_method": "task_arithmetic", "base_model": str(tmp_path / "base"),
                "models": [{"model": str(tmp_path / name), "parameters": {"weight": 0.5}}]}
        out = npsfuse.merge_checkpoints(conf, tmp_path / f"out_{name}", quiet=True)
        outs[name] = {k: v for f in sorted(out.glob("*.safetensors"))
                      for k, v in safetensors_torch.load_file(f).items()}
    assert set(outs["ft_bin"]) == set(outs["ft_st"])
    assert all(torch.equal(outs["ft_bin"][k], outs["ft_st"][k]) for k in outs["ft_st"])
    assert not any(torch.equal(outs["ft_st"][k], base[k]) for k in base if "norm" not in k)
