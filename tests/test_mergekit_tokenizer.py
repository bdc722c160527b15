"""Differential test of merged tokenizers (issue #14 item 4) against mergekit 0.1.5.

A tiny random Llama (2 layers, float32, untied LM head) with a word-level
tokenizer written here, and two fine-tunes that each add tokens (one shared,
one their own) and grow their embedding and LM head: the vocabularies
differ. ``npsfuse merge`` and mergekit's ``run_merge`` merge the same
configs (``tokenizer_source: base | union | <model>``, the ``tokenizer:``
block with ``tokens:`` rules and ``pad_to_multiple_of``, ``chat_template``);
every tensor must agree within 1 float32 ulp (padding rows, the mean of a
model's token rows, within the float32 sum's error bound: torch sums in
another order) and the saved tokenizers must have the same vocabulary, ids
and chat template.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
mergekit = pytest.importorskip("mergekit")
safetensors_torch = pytest.importorskip("safetensors.torch")

WORDS = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(37)]  # 40 tokens
ADDED = [["<x>", "<a>"], ["<x>", "<b>", "<c>"], []]  # the fine-tunes' added tokens
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
)


def _save_tokenizer(folder: Path, added: list[str], template: str | None = None) -> None:
    tok = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>")
    )
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.add_tokens(added)
    if template:
        fast.chat_template = template
    fast.save_pretrained(folder)


def _make_family(root: Path, tied: bool) -> dict[str, str]:
    """base (40 tokens), ft0 (+<x>, <a>: 42), ft1 (+<x>, <b>, <c>: 43) and
    ft2 (the base's 40, no chat template); ``tied``: the LM head is the
    embedding. ft0 and ft1 share the base's template: without a base model,
    mergekit takes the tokenizer of a model picked by set order."""

    def config(vocab: int) -> Any:
        return transformers.LlamaConfig(
            vocab_size=vocab,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=32,
            tie_word_embeddings=tied,
        )

    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(config(len(WORDS))).float()
    base.save_pretrained(root / "base", safe_serialization=True)
    _save_tokenizer(root / "base", [], CHATML)
    sd = base.state_dict()
    for i, added in enumerate(ADDED):
        g = torch.Generator().manual_seed(i + 1)
        n = len(WORDS) + len(added)
        ft = {}
        for k, v in sd.items():
            v = v + 0.02 * torch.randn(v.shape, generator=g)
            if k in ("model.embed_tokens.weight", "lm_head.weight"):
                v = torch.cat([v, torch.randn((len(added), v.shape[1]), generator=g)])
            ft[k] = v
        m = transformers.LlamaForCausalLM(config(n)).float()
        m.load_state_dict(ft)
        m.save_pretrained(root / f"ft{i}", safe_serialization=True)
        _save_tokenizer(root / f"ft{i}", added, CHATML if i < 2 else None)
    return {
        "base": str(root / "base"),
        **{f"ft{i}": str(root / f"ft{i}") for i in range(len(ADDED))},
    }


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The family with an untied LM head."""
    return _make_family(tmp_path_factory.mktemp("tokfamily"), tied=False)


@pytest.fixture(scope="module")
def tied_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The family with tied embeddings (no lm_head.weight stored)."""
    return _make_family(tmp_path_factory.mktemp("tiedfamily"), tied=True)


def _load(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(safetensors_torch.load_file(f))
    return out


def _ordered(x: Any) -> Any:
    i = x.float().contiguous().view(torch.int32).long()
    return torch.where(i < 0, -(i & 0x7FFFFFFF), i)


def _ulps(a: Any, b: Any) -> int:
    return int((_ordered(a) - _ordered(b)).abs().max().item()) if a.numel() else 0


def _mergekit(conf: dict[str, Any], out: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(
        MergeConfiguration.model_validate(conf),
        str(out),
        options=MergeOptions(
            copy_tokenizer=True, quiet=True, random_seed=0, write_model_card=False
        ),
    )


def _npsfuse(conf: dict[str, Any], out: Path) -> subprocess.CompletedProcess[str]:
    path = out.with_suffix(".yml")
    path.write_text(yaml.safe_dump(conf))
    return subprocess.run(
        [sys.executable, "-m", "npsfuse.cli", "merge", str(path), str(out), "--force"],
        capture_output=True,
        text=True,
        check=False,
    )


def _cases(f: dict[str, str]) -> dict[str, dict[str, Any]]:
    ta = {
        "merge_method": "task_arithmetic",
        "base_model": f["base"],
        "dtype": "float32",
        "models": [
            {"model": f["ft0"], "parameters": {"weight": 0.7}},
            {"model": f["ft1"], "parameters": {"weight": 0.4}},
        ],
    }
    # Equal weights: with others, linear's own rounding differs from
    # mergekit's fused multiply-add (test_mergekit_compat), not the vocabulary.
    lin = {
        "merge_method": "linear",
        "dtype": "float32",
        "models": [
            {"model": f["ft0"], "parameters": {"weight": 1.0}},
            {"model": f["ft1"], "parameters": {"weight": 1.0}},
        ],
    }
    return {
        "base": {**ta, "tokenizer_source": "base"},
        "union": {**ta, "tokenizer_source": "union"},
        "model as source": {**ta, "tokenizer_source": f["ft1"]},
        "linear union without base": {**lin, "tokenizer_source": "union"},
        "tokens rules and padding": {
            **ta,
            "tokenizer": {
                "source": "union",
                "pad_to_multiple_of": 16,
                "tokens": {
                    "<a>": {"source": {"kind": "zero"}},
                    "<b>": {"source": {"kind": "model_token", "model": f["ft0"], "token": "w3"}},
                    "w5": {"source": f["ft1"], "force": True},
                    "<new>": {"source": {"kind": "model_token", "model": f["base"], "token_id": 7}},
                },
            },
        },
        "chat template by name": {**ta, "tokenizer_source": "union", "chat_template": "chatml"},
        "chat template auto": {**ta, "tokenizer_source": "base", "chat_template": "auto"},
        "chat template literal, no tokenizer source": {
            "merge_method": "linear",
            "dtype": "float32",
            "chat_template": CHATML + " ",
            "models": [
                {"model": f["base"], "parameters": {"weight": 1.0}},
                {"model": f["ft2"], "parameters": {"weight": 1.0}},
            ],
        },
    }


@pytest.mark.parametrize("name", list(_cases({"base": "", "ft0": "", "ft1": "", "ft2": ""})))
def test_tokenizer_merge_matches_mergekit(
    family: dict[str, str], tmp_path: Path, name: str
) -> None:
    _compare(_cases(family)[name], tmp_path)


@pytest.mark.parametrize("name", ["union", "tokens rules and padding"])
def test_tied_embeddings_match_mergekit(
    tied_family: dict[str, str], tmp_path: Path, name: str
) -> None:
    _compare(_cases(tied_family)[name], tmp_path)
    assert "lm_head.weight" not in _load(tmp_path / "npsfuse")


def _compare(conf: dict[str, Any], tmp_path: Path) -> None:
    """Merge conf with both tools; compare tensors, config and tokenizer.

    mergekit's union visits the models' tokenizers in the iteration order of
    a set of model references (hash-randomised per process), so the ids it
    gives the added tokens of different models change from run to run;
    npsfuse takes the config's order. For a union, the vocabularies must
    hold the same tokens, the base's tokens the same ids, and the vocabulary
    rows are compared token by token; otherwise ids must be equal.
    """
    want_dir, got_dir = tmp_path / "mergekit", tmp_path / "npsfuse"
    _mergekit(conf, want_dir)
    run = _npsfuse(conf, got_dir)
    assert run.returncode == 0, run.stderr
    tw = transformers.AutoTokenizer.from_pretrained(want_dir)
    tg = transformers.AutoTokenizer.from_pretrained(got_dir)
    vw, vg = tw.get_vocab(), tg.get_vocab()
    union = "union" in (conf.get("tokenizer_source"), (conf.get("tokenizer") or {}).get("source"))
    assert set(vg) == set(vw)
    if union:
        assert all(vg[t] == i for t, i in vw.items() if i < len(WORDS))
    else:
        assert vg == vw
    tokens = len(vw)
    order = [vg[t] for t, _ in sorted(vw.items(), key=lambda kv: kv[1])]  # got rows, want's order
    want, got = _load(want_dir), _load(got_dir)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].shape == want[k].shape, (k, got[k].shape, want[k].shape)
        assert got[k].dtype == want[k].dtype, k
        w, g = want[k], got[k]
        if k in VOCAB_TENSORS and w.shape[0] > tokens:
            # Padding rows are each model's mean of its token rows: torch
            # sums them in its own order (lanes and levels that depend on
            # the shape), npsfuse in float64. Both are within the float32
            # sum's error bound, N·u·max|x| per mean, times the 3 inputs the
            # merge combines; the token rows stay within 1 ulp.
            bound = 3 * tokens * 2.0**-24 * float(w.abs().max())
            diff = float((g[tokens:] - w[tokens:]).abs().max())
            assert diff <= bound, (k, diff, bound)
            w, g = w[:tokens], g[:tokens]
        if k in VOCAB_TENSORS:
            g = g[order]
        assert _ulps(g, w) <= 1, (k, _ulps(g, w))
    cw = json.loads((want_dir / "config.json").read_text())
    cg = json.loads((got_dir / "config.json").read_text())
    assert cg["vocab_size"] == cw["vocab_size"]
    assert tg.chat_template == tw.chat_template
    assert sorted(map(str, tg.added_tokens_decoder.values())) == sorted(
        map(str, tw.added_tokens_decoder.values())
    )
    text = "w1 <x> w2 <b> w3 <c> <a> w36"
    assert tg.convert_ids_to_tokens(tg(text)["input_ids"]) == tw.convert_ids_to_tokens(
        tw(text)["input_ids"]
    )


def test_vocabulary_mismatch_is_explained(family: dict[str, str], tmp_path: Path) -> None:
    conf = {
        "merge_method": "task_arithmetic",
        "base_model": family["base"],
        "models": [{"model": family["ft0"]}, {"model": family["ft1"]}],
    }
    run = _npsfuse(conf, tmp_path / "out")
    assert run.returncode != 0
    msg = " ".join(run.stderr.split())
    for part in ("vocabularies differ", ": 40", ": 42", ": 43", "tokenizer_source: base", "union"):
        assert part in msg, (part, run.stderr)
    assert not (tmp_path / "out").exists()


def test_merge_checkpoints_takes_tokenizer_keys(family: dict[str, str], tmp_path: Path) -> None:
    """The Python door: a dict config with the tokenizer: block, as the CLI."""
    import npsfuse

    conf = _cases(family)["tokens rules and padding"]
    out = npsfuse.merge_checkpoints(conf, tmp_path / "out", quiet=True)
    sd = _load(out)
    vocab = transformers.AutoTokenizer.from_pretrained(out).get_vocab()
    assert sd["model.embed_tokens.weight"].shape[0] == 48  # 44 tokens + <new> = 45, padded to 16
    assert len(vocab) == 45
    # <a> is ft0's own token; the base and ft1 take zeros (its rule), so
    # task arithmetic gives 0 + 0.7·(a − 0) + 0.4·(0 − 0).
    a = _load(Path(family["ft0"]))["model.embed_tokens.weight"][len(WORDS) + 1]
    torch.testing.assert_close(sd["model.embed_tokens.weight"][vocab["<a>"]], 0.7 * a)
    assert not list(tmp_path.glob(".npsfuse-tokenizer-*"))  # the temporary folder is removed


def test_relative_paths_and_missing_model(
    family: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paths are resolved against the working directory, in the tokenizer
    rules too; a missing model is named, before anything is written."""
    import npsfuse

    monkeypatch.chdir(Path(family["base"]).parent)
    conf = {
        "merge_method": "task_arithmetic",
        "base_model": "./base",
        "models": [{"model": "ft0"}, {"model": "ft1/"}],
        "tokenizer": {"source": "union", "tokens": {"<x>": {"source": "./ft1", "force": True}}},
    }
    out = npsfuse.merge_checkpoints(conf, tmp_path / "out", quiet=True)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 44
    conf["models"].append({"model": "nowhere"})
    with pytest.raises(ValueError, match="nowhere is not a folder"):
        npsfuse.merge_checkpoints(conf, tmp_path / "out2", quiet=True)
    assert not (tmp_path / "out2").exists()


def _src(model: str, lo: int, hi: int, **params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "layer_range": [lo, hi]}
    if params:
        out["parameters"] = params
    return out


def _slice_cases(f: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Slices configs with tokenizer keys. mergekit (plan_module) merges the
    embeddings from the first slice's sources and the LM head from the last
    slice's first sources, each picking a token's default among its own
    models with its slice's base: the cases make the two groups differ."""
    base, ft0, ft1 = f["base"], f["ft0"], f["ft1"]
    return {
        # ft0's embeddings alone (<b>, <c>: zeros), ft1's head alone (<a>: zeros).
        "passthrough frankenmerge, union": {
            "merge_method": "passthrough",
            "dtype": "float32",
            "slices": [{"sources": [_src(ft0, 0, 2)]}, {"sources": [_src(ft1, 1, 2)]}],
            "tokenizer_source": "union",
        },
        # Embeddings of base, ft0, ft1 (<x>: the mean of ft0's and ft1's);
        # head of base and ft1 (<a>: zeros, <x>: ft1's).
        "task arithmetic slices, union": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "dtype": "float32",
            "slices": [
                {
                    "sources": [
                        _src(base, 0, 1),
                        _src(ft0, 0, 1, weight=0.7),
                        _src(ft1, 0, 1, weight=0.4),
                    ]
                },
                {"sources": [_src(base, 1, 2), _src(ft1, 1, 2, weight=0.4)]},
            ],
            "tokenizer_source": "union",
        },
        # The head's group is the last slice's first two sources (base, ft0).
        "tokens rules and padding, slices": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "dtype": "float32",
            "slices": [
                {"sources": [_src(base, 0, 1), _src(ft0, 0, 1, weight=0.7)]},
                {
                    "sources": [
                        _src(base, 1, 2),
                        _src(ft0, 1, 2, weight=0.7),
                        _src(ft1, 1, 2, weight=0.4),
                    ]
                },
            ],
            # (source: base with new tokens fails in mergekit 0.1.5: it adds
            # them to the base's tokenizer object, then finds them past the
            # base's vocab_size and leaves them out of its row map: KeyError.)
            "tokenizer": {
                "source": "union",
                "pad_to_multiple_of": 16,
                "tokens": {
                    "<a>": {"source": ft0},
                    "<z>": {"source": {"kind": "zero"}},
                    "w5": {"source": ft0, "force": True},
                    "<new>": {"source": {"kind": "model_token", "model": base, "token_id": 7}},
                },
            },
            "chat_template": "chatml",
        },
        "model as source, one slice": {
            "merge_method": "linear",
            "dtype": "float32",
            "slices": [
                {"sources": [_src(ft0, 0, 2, weight=1.0), _src(ft1, 0, 2, weight=1.0)]},
            ],
            "tokenizer_source": ft1,
        },
    }


@pytest.mark.parametrize("name", list(_slice_cases({"base": "", "ft0": "", "ft1": "", "ft2": ""})))
def test_slices_tokenizer_merge_matches_mergekit(
    family: dict[str, str], tmp_path: Path, name: str
) -> None:
    conf = _slice_cases(family)[name]
    _compare(conf, tmp_path)
    layers = sum(
        s["sources"][0]["layer_range"][1] - s["sources"][0]["layer_range"][0]
        for s in conf["slices"]
    )
    for side in ("mergekit", "npsfuse"):
        assert (
            json.loads((tmp_path / side / "config.json").read_text())["num_hidden_layers"] == layers
        )


def test_slices_tied_embeddings_match_mergekit(tied_family: dict[str, str], tmp_path: Path) -> None:
    _compare(_slice_cases(tied_family)["task arithmetic slices, union"], tmp_path)
    assert "lm_head.weight" not in _load(tmp_path / "npsfuse")


def test_slices_rule_outside_the_group_is_refused(family: dict[str, str], tmp_path: Path) -> None:
    """A tokens: rule takes its row from a model that does not merge the
    LM head (mergekit: the weight is missing): refused, the group named."""
    conf = copy.deepcopy(_slice_cases(family)["passthrough frankenmerge, union"])
    conf["tokenizer"] = {
        "source": conf.pop("tokenizer_source"),
        "tokens": {"<a>": {"source": family["ft0"]}},
    }
    with pytest.raises(ValueError, match="requires a vocabulary weight from model .*missing"):
        _mergekit(conf, tmp_path / "mergekit")
    run = _npsfuse(conf, tmp_path / "out")
    assert run.returncode != 0
    msg = " ".join(run.stderr.split())
    assert "is not a source of the head (slices[1]'s sources)" in msg, run.stderr
    assert not (tmp_path / "out").exists()
