"""PEFT LoRA adapters as models: merged into their base's weights on the fly.

Three forms are accepted wherever a fine-tuned model is (``npsfuse.merge``,
``npsfuse.task_vector``, the ``model+lora`` references of a YAML config):

* an adapter folder, as ``PeftModel.save_pretrained`` writes it
  (``adapter_config.json`` and ``adapter_model.safetensors`` or
  ``adapter_model.bin``), or the adapter weights file itself with its
  ``adapter_config.json`` beside it; it needs the base model's weights;
* a ``peft.PeftModel`` (or any module with LoRA layers injected, such as a
  ``transformers`` model after ``load_adapter``): its own base weights and
  its active adapters are used.

The weights are PEFT's ``merge_and_unload()`` result, computed the same way
(so bit for bit the same): for every LoRA layer ``W ← W + s·B@A`` (transposed
for ``fan_in_fan_out`` layers such as GPT-2's Conv1D, and for embeddings,
whose factors are ``lora_embedding_A/B``), with ``s = lora_alpha / r``, or
``lora_alpha / √r`` with ``use_rslora``; ``rank_pattern`` and
``alpha_pattern`` give per-module r and alpha (a pattern matches a module
whose name is the pattern or ends in ``.`` + the pattern, as in PEFT);
``lora_bias`` adds ``s·B.bias`` to the layer's bias; full tensors saved with
the adapter (``modules_to_save``, embedding layers saved with
``save_embedding_layers``) replace the base's. The factors are multiplied in
the factors' dtype (float32 for an adapter read from disk, as PEFT loads it;
half-precision factors multiplied in float32, PEFT's CPU path), then added
to the base weight in the promoted dtype and rounded to the base's dtype.
Names lose PEFT's ``base_model.model.`` prefix and the ``base_layer`` /
``original_module`` / ``modules_to_save.<adapter>`` wrappers, so they are the
base model's own names. DoRA (``use_dora``) and LoRA on convolutions are
refused with a message, as are other PEFT types than ``LORA``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._paths import CONFIG_FILE, WEIGHT_FILES, is_adapter_path  # noqa: F401  (re-exported)

StateDict = dict[str, torch.Tensor]

#: The prefix PEFT puts before the base model's names.
PREFIX = "base_model.model."

_FACTOR = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B"
    r"|lora_magnitude_vector)(?:\.(?P<adapter>[^.]+))??(?:\.(?P<leaf>weight|bias))?$"
)
#: Substrings that mark LoRA tensors in a state dict (for error messages).
LORA_MARKS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B", ".base_layer.")


@dataclass
class Lora:
    """One LoRA layer of an adapter: ``W ← W + scale·B@A`` (transposed when
    ``transpose``), and ``bias ← bias + scale·B.bias`` when ``bias`` is set."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float
    transpose: bool
    bias: torch.Tensor | None = None
    #: The dtype of the factors in PEFT's layer; ``None`` for an adapter
    #: read from disk, which PEFT loads in float32 (float64 for a float64
    #: base; ``autocast_adapter_dtype`` upcasts half-precision factors).
    dtype: torch.dtype | None = None


@dataclass
class Adapter:
    """A LoRA adapter in the base model's names: the LoRA layers by module
    name, and the full tensors it replaces (``modules_to_save``)."""

    what: str
    loras: dict[str, Lora] = field(default_factory=dict)
    full: StateDict = field(default_factory=dict)


def _strip(name: str) -> str:
    return name.removeprefix(PREFIX)


def has_lora_layers(model: Any) -> bool:
    """Whether ``model`` is a module with PEFT LoRA layers injected (a
    ``PeftModel``, or a model after ``get_peft_model``/``load_adapter``)."""
    if not isinstance(model, torch.nn.Module):
        return False
    return any(_is_lora_layer(m) for m in model.modules())


def _is_lora_layer(m: torch.nn.Module) -> bool:
    return (hasattr(m, "base_layer") and isinstance(getattr(m, "scaling", None), dict)
            and (hasattr(m, "lora_A") or hasattr(m, "lora_embedding_A")))


def looks_like_adapter(names: Any) -> bool:
    """Whether tensor ``names`` are those of LoRA factors (for the error of a
    name mismatch: a LoRA state dict passed as a full model)."""
    return any(mark in n or n.endswith((".lora_embedding_A", ".lora_embedding_B"))
               for n in names for mark in LORA_MARKS)


# --------------------------------------------------------------------------
# Adapter folders


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: the first pattern
    key that matches the whole module name or a dot-separated suffix of it
    (the key is a regular expression)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


def _read_weights(folder: Path, what: str) -> StateDict:
    st = folder / WEIGHT_FILES[0]
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    pt = folder / WEIGHT_FILES[1]
    if pt.is_file():
        return _torch_load(pt, what)
    raise FileNotFoundError(
        f"{what}: adapter folder {str(folder)!r} has {CONFIG_FILE} but no "
        f"{' or '.join(WEIGHT_FILES)}"
    )


def _torch_load(path: Path, what: str) -> StateDict:
    """A pickled state dict, loaded safely (``torch.load(weights_only=True)``)."""
    from ._state import _load_pickle

    return _load_pickle(path, what)


def read_adapter(path: str | os.PathLike, what: str = "model") -> Adapter:
    """The LoRA adapter saved at ``path`` (a folder, or its weights file).

    Raises
    ------
    ValueError
        Not a LoRA adapter (``peft_type``), DoRA, convolution LoRA, a
        factor without its partner, or a malformed ``adapter_config.json``.
    """
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    try:
        cfg = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what}: cannot read {folder / CONFIG_FILE}: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{what}: {folder / CONFIG_FILE} is not a JSON object")
    kind = str(cfg.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        raise ValueError(f"{what}: {str(folder)!r} is a PEFT {kind} adapter; npsfuse merges "
                         "LoRA adapters only")
    if cfg.get("use_dora"):
        raise ValueError(f"{what}: {str(folder)!r} is a DoRA adapter (use_dora), which npsfuse "
                         "does not merge; merge it with PEFT's merge_and_unload() and pass the "
                         "result")
    weights = _read_weights(folder, what) if p.is_dir() else (
        _torch_load(p, what) if p.suffix == ".bin" else _read_safetensors(p))
    r0, alpha0 = cfg.get("r", 8), cfg.get("lora_alpha", 8)
    ranks, alphas = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}

    def scale(module: str) -> float:
        r = _pattern_value(ranks, module, r0)
        alpha = _pattern_value(alphas, module, alpha0)
        return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r

    factors: dict[str, dict[str, torch.Tensor]] = {}
    full: StateDict = {}
    for k, t in weights.items():
        m = _FACTOR.match(_strip(k))
        if m is None:
            full[_strip(k).replace(".base_layer.", ".")] = t
            continue
        key = m["part"] + ("_bias" if m["leaf"] == "bias" else "")
        factors.setdefault(m["module"], {})[key] = t
    out = Adapter(what=what, full=full)
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
    for module, f in factors.items():
        out.loras[module] = _lora(module, f, scale(module), fan_in_fan_out, what)
    return out


def _read_safetensors(p: Path) -> StateDict:
    from safetensors.torch import load_file

    return load_file(str(p))


def _lora(module: str, f: Mapping[str, torch.Tensor], scale: float, fan_in_fan_out: bool,
          what: str, dtype: torch.dtype | None = None) -> Lora:
    if "lora_magnitude_vector" in f:
        raise ValueError(f"{what}: LoRA layer {module!r} is DoRA (lora_magnitude_vector), which "
                         "npsfuse does not merge; use PEFT's merge_and_unload()")
    if "lora_embedding_A" in f or "lora_embedding_B" in f:
        a, b = f.get("lora_embedding_A"), f.get("lora_embedding_B")
        transpose = True  # embeddings store (num_embeddings, dim): (B@A)ᵀ
    else:
        a, b = f.get("lora_A"), f.get("lora_B")
        transpose = fan_in_fan_out
    if a is None or b is None:
        raise ValueError(f"{what}: LoRA layer {module!r} lacks its "
                         f"{'A' if a is None else 'B'} factor")
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"{what}: LoRA layer {module!r} has factors of shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}; npsfuse merges LoRA on linear "
                         "and embedding layers only (not convolutions)")
    if b.shape[1] != a.shape[0]:
        raise ValueError(f"{what}: LoRA layer {module!r}: B {tuple(b.shape)} and A "
                         f"{tuple(a.shape)} do not multiply")
    return Lora(a=a, b=b, scale=float(scale), transpose=transpose, bias=f.get("lora_B_bias"),
                dtype=dtype)


# --------------------------------------------------------------------------
# Modules with LoRA layers


def split_module(module: torch.nn.Module, what: str = "model") -> tuple[StateDict, list[Adapter]]:
    """The base weights of a module with LoRA layers injected, in the base
    model's names, and its active adapters (in PEFT's order).

    Raises
    ------
    ValueError
        An adapter is already merged into the base weights, is DoRA, or
        targets a convolution.
    """
    sd = module.state_dict()
    layers = {_strip(n): m for n, m in module.named_modules() if _is_lora_layer(m)}
    names = _adapter_names(module)
    active = _active(module, names)
    adapters = {a: Adapter(what=f"{what} (adapter {a!r})") for a in active}
    base: StateDict = {}
    for k, t in sd.items():
        name = _strip(k)
        m = _FACTOR.match(name)
        if m is not None and (m["adapter"] in names or m["adapter"] is None):
            continue  # factors are read from the layers below
        saved = re.match(r"^(?P<module>.+)\.modules_to_save\.(?P<adapter>[^.]+)\.(?P<rest>.+)$",
                         name)
        if saved is not None:
            a = saved["adapter"]
            if a in adapters:
                adapters[a].full[f"{saved['module']}.{saved['rest']}"] = t
            continue
        name = name.replace(".base_layer.", ".").replace(".original_module.", ".")
        if any(f".{part}." in f".{name}." for part in ("lora_dropout",)):
            continue
        base[name] = t
    for lname, layer in layers.items():
        if getattr(layer, "merged_adapters", None):
            raise ValueError(f"{what}: adapters {layer.merged_adapters} are already merged into "
                             f"the weights of {lname!r}; call unmerge_adapter() first, or pass "
                             "the model merge_and_unload() returns")
        if getattr(layer, "disable_adapters", False) is True:  # PEFT's disable_adapter()
            continue
        for a in active:
            f: dict[str, torch.Tensor] = {}
            for part in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
                holder = getattr(layer, part, None)
                if holder is None or a not in holder:
                    continue
                x = holder[a]
                f[part] = (x.weight if isinstance(x, torch.nn.Module) else x).detach()
                if part == "lora_B" and getattr(layer, "lora_bias", {}).get(a):
                    f["lora_B_bias"] = x.bias.detach()
            if not f:
                continue
            if getattr(layer, "use_dora", {}).get(a):
                f["lora_magnitude_vector"] = torch.empty(0)
            fan = bool(getattr(layer, "fan_in_fan_out", False))
            adapters[a].loras[lname] = _lora(lname, f, layer.scaling[a], fan, adapters[a].what,
                                             f["lora_B" if "lora_B" in f else
                                               "lora_embedding_B"].dtype)
    return base, [adapters[a] for a in active]


def _adapter_names(module: torch.nn.Module) -> set[str]:
    cfg = getattr(module, "peft_config", None)
    names = set(cfg) if isinstance(cfg, Mapping) else set()
    for m in module.modules():
        if _is_lora_layer(m):
            names |= set(m.scaling)
    return names


def _active(module: torch.nn.Module, names: set[str]) -> list[str]:
    """The active adapters: PEFT's ``active_adapters`` (a property of
    ``PeftModel``, a method of ``transformers`` models), else those of the
    first LoRA layer."""
    try:
        act = module.active_adapters
        act = act() if callable(act) else act
    except (AttributeError, ValueError):
        act = None
    if not act:
        layer = next((m for m in module.modules() if _is_lora_layer(m)), None)
        act = getattr(layer, "active_adapters", None) if layer is not None else None
    if isinstance(act, str):
        act = [act]
    if getattr(module, "disable_adapters", False) is True:
        return []
    return [a for a in (act or []) if a in names]


# --------------------------------------------------------------------------
# Applying adapters


def apply(base: Mapping[str, torch.Tensor], adapter: Adapter) -> StateDict:
    """The base's weights with ``adapter`` merged in (PEFT's
    ``merge_and_unload``); tensors the adapter does not touch are the base's
    own (not copied).

    Raises
    ------
    ValueError
        The adapter names a module or tensor the base lacks, or its factors
        do not fit the base weight's shape.
    """
    out = dict(base)
    missing = [k for k in adapter.full if k not in base]
    missing += [f"{m}.weight" for m in adapter.loras if f"{m}.weight" not in base]
    if missing:
        raise ValueError(
            f"{adapter.what}: the adapter names {len(missing)} tensor(s) the base model lacks, "
            f"e.g. {missing[0]!r} (base has e.g. {next(iter(base), None)!r}): it was made for "
            "another base model"
        )
    for k, t in adapter.full.items():
        if tuple(t.shape) != tuple(base[k].shape):
            raise ValueError(f"{adapter.what}: tensor {k!r} saved with the adapter has shape "
                             f"{tuple(t.shape)}, the base {tuple(base[k].shape)}")
        out[k] = t.to(base[k].dtype)
    for module, lora in adapter.loras.items():
        wname = f"{module}.weight"
        w = out[wname]
        delta = delta_weight(lora, w.dtype)
        if tuple(delta.shape) != tuple(w.shape):
            raise ValueError(f"{adapter.what}: LoRA layer {module!r} gives an update of shape "
                             f"{tuple(delta.shape)} for weight {wname!r} of shape "
                             f"{tuple(w.shape)}")
        out[wname] = torch.add(w.detach(), delta.to(w.device)).to(w.dtype)
        if lora.bias is not None:
            bname = f"{module}.bias"
            if bname not in out:
                raise ValueError(f"{adapter.what}: LoRA layer {module!r} has a bias (lora_bias) "
                                 "but the base layer has none")
            bias = out[bname]
            out[bname] = torch.add(bias.detach(), lora.bias.to(_factor_dtype(lora, bias.dtype))
                                   * lora.scale).to(bias.dtype)
    return out


def _factor_dtype(lora: Lora, base_dtype: torch.dtype) -> torch.dtype:
    if lora.dtype is not None:
        return lora.dtype
    return torch.float64 if base_dtype == torch.float64 else torch.float32


def delta_weight(lora: Lora, base_dtype: torch.dtype) -> torch.Tensor:
    """``scale·B@A`` (transposed if the layer says so) in the factors' dtype;
    half-precision factors are multiplied in float32 and the product rounded
    back, as PEFT does on CPU."""
    dtype = _factor_dtype(lora, base_dtype)
    a, b = lora.a.detach().to(dtype), lora.b.detach().to(dtype)
    half = dtype in (torch.float16, torch.bfloat16)
    if half:
        a, b = a.float(), b.float()
    d = b @ a
    if lora.transpose:
        d = d.T
    d = d * lora.scale
    return d.to(dtype) if half else d


def load(model: Any, what: str, base: Mapping[str, torch.Tensor] | None) -> StateDict:
    """The weights of a PEFT input (:func:`is_adapter_path` or
    :func:`has_lora_layers`): for ``what == "base"`` a module's base weights
    without its adapters; otherwise with the active adapters merged in (an
    adapter folder into ``base``, which it then needs).

    Raises
    ------
    ValueError
        An adapter folder without a base, and the errors of :func:`apply`,
        :func:`read_adapter` and :func:`split_module`.
    """
    if isinstance(model, torch.nn.Module):
        own, adapters = split_module(model, what)
        if what == "base":
            return own
        for ad in adapters:
            own = apply(own, ad)
        return own
    if what == "base" or base is None:
        raise ValueError(
            f"{what} is a PEFT LoRA adapter folder ({str(model)!r}, with {CONFIG_FILE}): it "
            "holds only the LoRA factors; pass it among the fine-tuned models with the model "
            "it was trained on as the base, or merge it first (PEFT's merge_and_unload)"
        )
    return apply(base, read_adapter(model, what))
