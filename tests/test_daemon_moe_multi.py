"""The daemon's merge job runs mergekit-moe configs and mergekit-multi's named
documents (issue #14 item 8) through the one implementation of ``npsfuse moe``
and ``npsfuse multi``, :mod:`npsfuse._mergekit_job`, with the daemon's
``python`` setting: the daemon's checkpoints are the CLI's, tensor for tensor
and bit for bit. Also: refusal without the setting, a path outside the data
roots refused before Python starts, and nothing left behind (the job's
scratch folder, temporary folders beside ``out_dir``).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from npsfuse.client import JobFailedError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from safetensors.torch import load_file  # noqa: E402
from test_daemon import Daemon, npsfused_bin  # noqa: E402, F401  (the daemon fixture)

WORDS = ["code", "python", "def", "return", "math", "sum", "prove", "number", "poem", "rose"]


def _family(root: Path) -> dict[str, str]:
    """A tiny Mistral base with a word-level tokenizer and three fine-tunes
    (the base plus distinct noise), all with the base's tokenizer."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    cfg = transformers.MistralConfig(
        vocab_size=16, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    base = transformers.MistralForCausalLM(cfg).float()
    out = {"base": str(root / "base")}
    base.save_pretrained(root / "base", safe_serialization=True)
    fast.save_pretrained(root / "base")
    sd = base.state_dict()
    for i in range(3):
        g = torch.Generator().manual_seed(i + 10)
        m = transformers.MistralForCausalLM(cfg).float()
        m.load_state_dict({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in sd.items()})
        m.save_pretrained(root / f"e{i}", safe_serialization=True)
        fast.save_pretrained(root / f"e{i}")
        out[f"e{i}"] = str(root / f"e{i}")
    return out


def _moe_config(f: dict[str, str], mode: str) -> dict[str, Any]:
    return {
        "base_model": f["base"],
        "gate_mode": mode,
        "experts_per_token": 2,
        "experts": [
            {"source_model": f["e0"], "positive_prompts": ["def python code"]},
            {"source_model": f["e1"], "positive_prompts": ["prove math number"],
             "negative_prompts": ["poem rose"]},
        ],
    }  # fmt: skip


def _multi_docs(f: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {"name": "pair", "merge_method": "ties", "base_model": f["base"],
         "parameters": {"density": 0.5},
         "models": [{"model": f["e0"], "parameters": {"weight": 1.0}},
                    {"model": f["e1"], "parameters": {"weight": 0.5}}],
         "dtype": "float32"},
        {"merge_method": "task_arithmetic", "base_model": f["base"],
         "models": [{"model": "pair", "parameters": {"weight": 0.7}},
                    {"model": f["e2"], "parameters": {"weight": 0.3}}],
         "dtype": "float32"},
    ]  # fmt: skip


def _tensors(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    assert out, f"no tensors in {folder}"
    return out


def _same_tensors(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype, k
        assert torch.equal(ta[k], tb[k]), k


@pytest.fixture
def daemon_at(npsfused_bin: str) -> Any:  # noqa: F811
    """Start a daemon, with (``python=True``) a wrapper of this interpreter
    as its python setting, which records each start in ``d.marker``."""
    made: list[Daemon] = []

    def start(python: bool = True) -> Daemon:
        d = Daemon(npsfused_bin)
        made.append(d)
        d.marker = d.dir / "python-started"
        script = d.dir / "python"
        script.write_text(f'#!/bin/sh\necho x >> {d.marker}\nexec {sys.executable} "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        if python:
            d.args += ["--python", str(script)]
        return d.start()

    yield start
    for d in made:
        d.cleanup()


def _left_behind(d: Daemon) -> list[str]:
    """Job scratch folders and temporary folders the jobs left."""
    s = d.dir / "state" / "scratch"
    left = sorted(os.listdir(s)) if s.is_dir() else []
    return left + [p.name for p in d.root.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("mode", ["random", "cheap_embed"])
def test_moe_as_the_cli(daemon_at: Any, tmp_path: Path, mode: str) -> None:
    d = daemon_at()
    f = _family(d.root / "fam")
    conf = _moe_config(f, mode)
    path = tmp_path / "moe.yml"
    path.write_text(yaml.safe_dump(conf))
    r = subprocess.run(
        [sys.executable, "-m", "npsfuse.cli", "moe", str(path), str(tmp_path / "cli"),
         "--seed", "5", "--quiet"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    job = d.client().submit_merge(path, out_dir=d.root / "daemon", seed=5)
    got = job.result(timeout=600)
    assert got == d.root / "daemon"
    _same_tensors(tmp_path / "cli", got)
    for name in ("config.json", "tokenizer.json"):
        assert (tmp_path / "cli" / name).read_bytes() == (got / name).read_bytes(), name
    assert "done" in job.status()["progress"]["message"]
    assert _left_behind(d) == []
    # Another seed draws other gates (the seed reaches Python).
    other = d.client().submit_merge(conf, out_dir=d.root / "other", seed=6).result(timeout=600)
    if mode == "random":
        a, b = _tensors(got), _tensors(other)
        assert not torch.equal(a["model.layers.0.mlp.gate.weight"],
                               b["model.layers.0.mlp.gate.weight"])  # fmt: skip
    # out_dir holds a model now: refused without force, replaced with it.
    with pytest.raises(JobFailedError, match="not empty"):
        d.client().submit_merge(conf, out_dir=got, seed=5).result(timeout=600)
    d.client().submit_merge(conf, out_dir=got, seed=5, force=True).result(timeout=600)
    _same_tensors(tmp_path / "cli", got)
    assert _left_behind(d) == []


def test_multi_as_the_cli(daemon_at: Any, tmp_path: Path) -> None:
    d = daemon_at()
    f = _family(d.root / "fam")
    path = tmp_path / "multi.yml"
    path.write_text(yaml.safe_dump_all(_multi_docs(f)))
    r = subprocess.run(
        [sys.executable, "-m", "npsfuse.cli", "multi", str(path), "-I", str(tmp_path / "cli_i"),
         "--out-path", str(tmp_path / "cli"), "--quiet"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    c = d.client()
    # The YAML file, named merges kept in intermediate_dir.
    job = c.submit_merge(path, out_dir=d.root / "out", intermediate_dir=d.root / "inter")
    got = job.result(timeout=600)
    assert got == d.root / "out"
    _same_tensors(tmp_path / "cli", got)
    _same_tensors(tmp_path / "cli_i" / "pair", d.root / "inter" / "pair")
    res = job.status()["result"]
    assert res["outputs"] == {"pair": str(d.root / "inter" / "pair"), "final": str(got)}
    # The documents as a list, named merges in the job's scratch folder.
    got2 = c.submit_merge(_multi_docs(f), out_dir=d.root / "out2").result(timeout=600)
    _same_tensors(tmp_path / "cli", got2)
    assert _left_behind(d) == []
    assert d.marker.read_text().count("x") == 2


def test_refused_without_python(daemon_at: Any) -> None:
    d = daemon_at(python=False)
    f = _family(d.root / "fam")
    with pytest.raises(ValueError, match=r"mergekit-moe.*python .*NPSFUSE_PYTHON.*npsfuse moe"):
        d.client().submit_merge(_moe_config(f, "random"), out_dir=d.root / "x", seed=1)
    with pytest.raises(ValueError, match=r"mergekit-multi.*NPSFUSE_PYTHON.*npsfuse multi"):
        d.client().submit_merge(_multi_docs(f), out_dir=d.root / "x")
    assert not (d.root / "x").exists()


def test_outside_the_data_roots_refused_before_python(daemon_at: Any, tmp_path: Path) -> None:
    d = daemon_at()
    inside = _family(d.root / "fam")
    outside = _family(tmp_path / "fam")
    moe = _moe_config(inside, "random")
    moe["experts"][1]["source_model"] = outside["e1"]
    with pytest.raises(PermissionError, match=r"experts\[1\].source_model.*outside the data roots"):
        d.client().submit_merge(moe, out_dir=d.root / "x", seed=1)
    docs = _multi_docs(inside)
    docs[1]["models"][1]["model"] = outside["e2"]
    with pytest.raises(PermissionError, match=r"configs\[1\].models\[1\].model.*outside"):
        d.client().submit_merge(docs, out_dir=d.root / "x")
    with pytest.raises(PermissionError, match="intermediate_dir.*outside"):
        d.client().submit_merge(
            _multi_docs(inside), out_dir=d.root / "x", intermediate_dir=tmp_path / "i"
        )
    with pytest.raises(PermissionError, match="out_dir.*outside"):
        d.client().submit_merge(_moe_config(inside, "random"), out_dir=tmp_path / "x")
    assert not d.marker.exists(), "Python started for a refused config"
