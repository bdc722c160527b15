"""Mixture-of-experts from dense models: mergekit-moe's configs, Mixtral output.

``npsfuse moe CONFIG OUT_DIR`` (and ``npsfuse.moe(config, out_dir)`` in Python)
reads a mergekit-moe YAML config and writes a Mixtral-style checkpoint: the base model's attention,
norms and embeddings, each layer's MLP taken from every expert model as one
expert, and a router (gate) per layer built from prompts::

    base_model: ./mistral-base
    gate_mode: hidden   # or hidden_avg, hidden_last, cheap_embed, random, uniform_random
    dtype: bfloat16
    experts_per_token: 2
    experts:
      - source_model: ./mistral-code
        positive_prompts: ["def fibonacci(n):"]
      - source_model: ./mistral-math
        positive_prompts: ["Solve for x:"]
        negative_prompts: ["Write a poem"]

Semantics follow mergekit 0.1.5 (``mergekit-moe``), checked against it by a
differential test: the router row of expert *e* in layer *l* is the prompts'
hidden state entering layer *l* (``hidden``/``hidden_last``: the last token's;
``hidden_avg``: the mean over tokens), averaged over the expert's positive
prompts, minus the same for its negative prompts, then normalised to unit L2
norm; the hidden states come from the base model in bfloat16, prompts
tokenised by the base's tokenizer with its BOS token prepended and left
padding. ``cheap_embed`` uses the normalised sum of the prompts' token
embeddings for every layer instead. ``random`` and ``uniform_random`` draw
the router (set ``seed`` for a reproducible draw; mergekit does not seed).
``noise_scale`` adds Gaussian noise to an expert's MLP weights and
``residual_scale`` scales its ``down_proj``.

Only the Mixtral output (Llama or Mistral inputs) is supported; mergekit's
Qwen-MoE and DeepSeek outputs (``shared_experts``) are refused with a message.
The expert tensors are written in the layout of the installed transformers
(fused ``experts.gate_up_proj`` / ``experts.down_proj`` in transformers 5, one
tensor per expert before). The output is written to a temporary folder next to
``out_dir`` and renamed into place at the end.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["GATE_MODES", "moe"]

#: Router initialisations mergekit-moe knows.
GATE_MODES = ("hidden", "hidden_avg", "hidden_last", "cheap_embed", "random", "uniform_random")

_TOP_KEYS = ("base_model", "experts", "gate_mode", "dtype", "experts_per_token",
             "shared_experts", "architecture")
_EXPERT_KEYS = ("source_model", "positive_prompts", "negative_prompts", "noise_scale",
                "residual_scale")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _unknown(keys: Sequence[str], known: Sequence[str], where: str) -> list[str]:
    out = []
    for k in keys:
        if k not in known:
            close = difflib.get_close_matches(str(k), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            out.append(f"unknown key {k!r} in {where}{hint}")
    return out


def _load_config(config: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    import yaml

    path = Path(config)
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise ValueError(f"{path}: a mergekit-moe config is one YAML mapping "
                         f"(found {len(docs)} documents)")
    return docs[0]


def _check(conf: Mapping[str, Any], allow_all_same: bool) -> list[dict[str, Any]]:
    """The config's problems, all at once (mergekit's rules); returns the experts."""
    errors = _unknown(list(conf), _TOP_KEYS, "the config")
    if "merge_method" in conf or "models" in conf or "slices" in conf:
        errors.append("this is a merge config, not a mergekit-moe one: run `npsfuse merge`")
    if not conf.get("base_model"):
        errors.append("base_model is missing")
    experts = conf.get("experts")
    if not isinstance(experts, list) or not experts:
        errors.append("experts must be a non-empty list of {source_model: PATH, "
                      "positive_prompts: [...]}")
        experts = []
    mode = conf.get("gate_mode", "hidden")
    if mode not in GATE_MODES:
        close = difflib.get_close_matches(str(mode), GATE_MODES, n=1)
        errors.append(f"gate_mode {mode!r} is not one of {', '.join(GATE_MODES)}"
                      + (f" (did you mean {close[0]!r}?)" if close else ""))
    k = conf.get("experts_per_token", 2)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        errors.append(f"experts_per_token must be an integer ≥ 1, not {k!r}")
    elif experts and len(experts) < k:
        errors.append(f"experts_per_token is {k} but there are only {len(experts)} experts")
    if conf.get("shared_experts"):
        errors.append("shared_experts need mergekit's Qwen-MoE or DeepSeek output, which "
                      "npsfuse does not write (only Mixtral)")
    arch = conf.get("architecture")
    if arch is not None and not "mixtral".startswith(str(arch).lower()):
        errors.append(f"architecture {arch!r}: npsfuse writes only the Mixtral output")
    dtype = conf.get("dtype")
    if dtype is not None and dtype not in _DTYPES:
        errors.append(f"dtype {dtype!r} is not one of float32, float16, bfloat16")
    for i, e in enumerate(experts):
        if not isinstance(e, dict):
            errors.append(f"experts[{i}] must be a mapping with source_model")
            continue
        errors += _unknown(list(e), _EXPERT_KEYS, f"experts[{i}]")
        if not e.get("source_model"):
            errors.append(f"experts[{i}].source_model is missing")
        for key in ("positive_prompts", "negative_prompts"):
            v = e.get(key)
            if v is not None and not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
                errors.append(f"experts[{i}].{key} must be a list of strings")
        if mode not in ("random", "uniform_random") and not e.get("positive_prompts"):
            errors.append(f"experts[{i}] has no positive_prompts (gate_mode {mode!r} "
                          "routes by prompts; use gate_mode: random for none)")
    if not errors and mode not in ("random", "uniform_random") and len(experts) > 1:
        tup = [(tuple(e["positive_prompts"]), tuple(e.get("negative_prompts") or []))
               for e in experts]
        if all(t == tup[0] for t in tup[1:]):
            errors.append("every expert has the same prompts: the router could not tell "
                          "them apart (give each expert prompts of what it should receive)")
    if not errors and not allow_all_same and len(experts) > 1:
        if all(str(e["source_model"]) == str(experts[0]["source_model"]) for e in experts[1:]):
            errors.append("every expert is the same model: the MoE would cost more and "
                          "answer the same (allow it with allow_all_same=True / "
                          "--i-understand-this-is-not-useful-without-training)")
    if errors:
        raise ValueError("the mergekit-moe config has {} problem{}:\n  - {}".format(
            len(errors), "" if len(errors) == 1 else "s", "\n  - ".join(errors)))
    return experts


def _folder(ref: Any, what: str, root: Path | None) -> Path:
    p = Path(str(ref)).expanduser()
    if not p.is_absolute() and root is not None and not p.exists():
        p = root / p
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{what} {str(ref)!r}: no model folder with config.json there")
    return p


class _Tensors:
    """Lazy reader of a safetensors checkpoint folder (one file or shards)."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        from ._paths import safetensors_files

        files = safetensors_files(folder)  # the index's shards, or the folder's files
        self.folder = folder
        self._where: dict[str, Any] = {}
        self._handles = [safe_open(str(f), framework="pt") for f in files]
        for h in self._handles:
            for name in h.keys():
                self._where[name] = h

    def names(self) -> list[str]:
        return list(self._where)

    def get(self, name: str) -> torch.Tensor:
        try:
            return self._where[name].get_tensor(name)
        except KeyError:
            raise KeyError(f"{self.folder}: tensor {name!r} is missing") from None


def _tokenizer(base: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    tok.padding_side = "left"
    tok.pad_token_id = tok.bos_token_id
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _tokenize(tok: Any, prompts: Sequence[str]) -> Any:
    return tok([(tok.bos_token or "") + p for p in prompts], return_tensors="pt",
               padding=True, add_special_tokens=False)


def _gates(mode: str, base: Path, tok: Any, experts: Sequence[Mapping[str, Any]],
           cfg: Any, device: str, seed: int | None) -> torch.Tensor:
    """Router vectors, shape (layers, experts, hidden)."""
    layers, hidden, n = cfg.num_hidden_layers, cfg.hidden_size, len(experts)
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    if mode == "random":
        return torch.randn((layers, n, hidden), generator=gen)
    if mode == "uniform_random":
        s = math.sqrt(1.0 / hidden)
        return torch.rand((layers, n, hidden), generator=gen) * 2 * s - s
    if mode == "cheap_embed":
        embed = _Tensors(base).get("model.embed_tokens.weight").float()

        def vec(t: Any) -> torch.Tensor:
            h = embed[t["input_ids"]] * t["attention_mask"].unsqueeze(-1)
            v = h.sum(dim=1).sum(dim=0, keepdim=True)
            return (v / v.norm(dim=-1, keepdim=True).clamp(min=1e-8)).repeat(layers, 1)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16).to(device)
        model.eval()

        def vec(t: Any) -> torch.Tensor:
            with torch.no_grad():
                out = model(**t.to(device), output_hidden_states=True, return_dict=True)
            hs = torch.stack(out.hidden_states[:-1])  # (layers, batch, seq, hidden)
            hs = hs.sum(dim=2) / hs.shape[2] if mode == "hidden_avg" else hs[:, :, -1, :]
            return (hs.sum(dim=1) / hs.shape[1]).cpu()

    rows = []
    for e in experts:
        h = vec(_tokenize(tok, e["positive_prompts"]))
        if e.get("negative_prompts"):
            h -= vec(_tokenize(tok, e["negative_prompts"]))
        h /= h.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)
        rows.append(h)
    return torch.stack(rows, dim=0).permute(1, 0, 2)


def _warn_degenerate(gates: torch.Tensor, threshold: float = 5.0) -> None:
    bad = [i for i in range(gates.shape[0]) if torch.linalg.cond(gates[i].float()) > threshold]
    if bad:
        warnings.warn(f"layers {bad} have nearly parallel router rows (condition number > "
                      f"{threshold}): the prompts may be too similar, some experts will be "
                      "underused", stacklevel=3)


def _noise_scale(t: torch.Tensor, e: Mapping[str, Any], residual: bool,
                 gen: torch.Generator | None) -> torch.Tensor:
    if e.get("noise_scale") is not None:
        t = t + torch.randn(t.shape, generator=gen, dtype=t.dtype) * e["noise_scale"]
    if residual and e.get("residual_scale") is not None:
        t = t * e["residual_scale"]
    return t


def _fused_layout() -> bool:
    """Whether the installed transformers stores Mixtral experts fused (v5)."""
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=2)
    with torch.device("meta"):
        names = MixtralForCausalLM(cfg).state_dict().keys()
    return any(n.endswith("experts.gate_up_proj") for n in names)


def _expert_tensors(layer: int, experts: Sequence[Mapping[str, Any]],
                    readers: Sequence[_Tensors], fused: bool,
                    gen: torch.Generator | None) -> Iterator[tuple[str, torch.Tensor]]:
    pre = f"model.layers.{layer}.mlp"
    parts: dict[str, list[torch.Tensor]] = {"gate_proj": [], "up_proj": [], "down_proj": []}
    for e, r in zip(experts, readers, strict=True):
        for src in parts:
            parts[src].append(_noise_scale(r.get(f"{pre}.{src}.weight"), e,
                                           src == "down_proj", gen))
    if fused:
        yield f"{pre}.experts.gate_up_proj", torch.cat(
            [torch.stack(parts["gate_proj"]), torch.stack(parts["up_proj"])], dim=1)
        yield f"{pre}.experts.down_proj", torch.stack(parts["down_proj"])
        return
    for i in range(len(experts)):
        for src, w in (("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")):
            yield f"{pre}.experts.{i}.{w}.weight", parts[src][i]


def _out_config(base_cfg: Any, n_experts: int, k: int, dtype: torch.dtype | None) -> Any:
    from transformers import MistralConfig, MixtralConfig

    if not isinstance(base_cfg, MistralConfig):
        m = MistralConfig(**base_cfg.to_dict())
        m.sliding_window = None
        m.max_position_embeddings = base_cfg.max_position_embeddings
        base_cfg = m
    out = MixtralConfig(**base_cfg.to_dict())
    out.architectures = ["MixtralForCausalLM"]
    out.num_local_experts = n_experts
    out.num_experts_per_tok = k
    out.sliding_window = None
    if dtype is not None:
        out.dtype = dtype
    if n_experts & (n_experts - 1):
        warnings.warn(f"{n_experts} experts is not a power of two: llama.cpp cannot run the "
                      "model", stacklevel=3)
    return out


class _ShardWriter:
    """Writes tensors into ``model-0000i-of-0000n.safetensors`` shards of at most
    ``shard_size`` bytes, plus the index when there is more than one."""

    def __init__(self, folder: Path, shard_size: int) -> None:
        self.folder, self.limit = folder, shard_size
        self.cur: dict[str, torch.Tensor] = {}
        self.size = 0
        self.files: list[list[str]] = []

    def add(self, name: str, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        if self.cur and self.size + n > self.limit:
            self._flush()
        self.cur[name] = t.contiguous()
        self.size += n

    def _flush(self) -> None:
        from safetensors.torch import save_file

        i = len(self.files)
        save_file(self.cur, str(self.folder / f"part-{i}.safetensors"), metadata={"format": "pt"})
        self.files.append(list(self.cur))
        self.cur, self.size = {}, 0

    def finish(self) -> None:
        if self.cur or not self.files:
            self._flush()
        n = len(self.files)
        if n == 1:
            os.replace(self.folder / "part-0.safetensors", self.folder / "model.safetensors")
            return
        weight_map = {}
        for i, names in enumerate(self.files):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.folder / f"part-{i}.safetensors", self.folder / final)
            weight_map.update(dict.fromkeys(names, final))
        total = sum(os.path.getsize(self.folder / f) for f in set(weight_map.values()))
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _config_dtype(cfg: Any) -> torch.dtype | None:
    """The dtype a Hugging Face config declares (``dtype`` or ``torch_dtype``)."""
    d = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    if isinstance(d, torch.dtype) or d is None:
        return d
    return _DTYPES.get(str(d).removeprefix("torch."))


def moe(
    config: str | os.PathLike[str] | Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    device: str = "cpu",
    seed: int | None = None,
    allow_all_same: bool = False,
    copy_tokenizer: bool = True,
    shard_size: int = 5_000_000_000,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Build a Mixtral-style mixture of experts from dense models (mergekit-moe).

    Parameters
    ----------
    config : path or mapping
        A mergekit-moe config (see the module docstring); relative model paths
        are taken from the config file's folder when they do not exist as given.
    out_dir : path
        Output folder; must not exist or be empty unless ``force``.
    device : str
        Where the base model runs for the ``hidden*`` gate modes.
    seed : int, optional
        Seed of the random draws (``random``/``uniform_random`` gates,
        ``noise_scale``); ``None`` draws from torch's global generator as
        mergekit does.
    allow_all_same : bool
        Accept experts that are all the same model (useful only before training).
    copy_tokenizer : bool
        Save the base's tokenizer into the output.
    shard_size : int
        Maximum bytes per output safetensors file.
    force : bool
        Replace a non-empty ``out_dir``.
    progress : bool
        Show a progress bar over the layers.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    ValueError
        For a config mergekit-moe would refuse (every problem listed at once) or
        input models of another architecture than Llama/Mistral.
    FileNotFoundError
        For a model folder or tensor that does not exist.
    """
    from transformers import AutoConfig

    conf = _load_config(config)
    root = None if isinstance(config, Mapping) else Path(config).resolve().parent
    experts = _check(conf, allow_all_same)
    base = _folder(conf["base_model"], "base_model", root)
    folders = [_folder(e["source_model"], f"experts[{i}].source_model", root)
               for i, e in enumerate(experts)]
    base_cfg = AutoConfig.from_pretrained(str(base))
    for f in [base, *folders]:
        mt = AutoConfig.from_pretrained(str(f)).model_type
        if mt not in ("llama", "mistral") or mt != base_cfg.model_type:
            raise ValueError(f"{f}: model_type {mt!r}; the Mixtral output needs Llama or "
                             f"Mistral models, all of one type (base: {base_cfg.model_type!r})")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty (pass force=True / --force to replace it)")
    dtype = _DTYPES[conf["dtype"]] if conf.get("dtype") else _config_dtype(base_cfg)
    mode = conf.get("gate_mode", "hidden")
    tok = _tokenizer(base)
    gates = _gates(mode, base, tok, experts, base_cfg, device, seed)
    _warn_degenerate(gates)
    gen = None if seed is None else torch.Generator().manual_seed(seed + 1)
    tmp = out.parent / f".{out.name}.npsfuse-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _out_config(base_cfg, len(experts), conf.get("experts_per_token", 2), dtype
                    ).save_pretrained(str(tmp))
        cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
        reader = _Tensors(base)
        readers = [_Tensors(f) for f in folders]
        w = _ShardWriter(tmp, shard_size)
        for name in reader.names():
            if ".mlp." not in name:
                w.add(name, cast(reader.get(name)))
        fused = _fused_layout()
        layers = range(base_cfg.num_hidden_layers)
        if progress:
            from ._display import progress_bar

            layers = progress_bar(iterable=layers, desc="npsfuse moe", unit="layer")
        for layer in layers:
            for name, t in _expert_tensors(layer, experts, readers, fused, gen):
                w.add(name, cast(t))
            w.add(f"model.layers.{layer}.mlp.gate.weight", cast(gates[layer].contiguous()))
        w.finish()
        if copy_tokenizer:
            tok.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
