"""Model references as mergekit writes them: local paths, Hugging Face Hub
ids and ``model+lora``.

One implementation for the Python doors (``npsfuse merge``, the notebook's
:func:`npsfuse.merge_checkpoints` and :func:`npsfuse.merge`): the references
of a YAML config are resolved here, to local folders, before the config goes
to the Go engine, which sees plain paths.

* ``org/name`` or ``org/name@revision`` that is not a local path is a Hub
  repository, resolved through the Hugging Face cache with
  ``huggingface_hub.snapshot_download`` (``HF_HUB_CACHE`` / ``HF_HOME``
  honoured): from the cache without a request with ``HF_HUB_OFFLINE=1`` or
  a commit revision (40 hex digits); otherwise as ``huggingface_hub`` does
  (a branch or tag checked for updates and downloaded, the cached snapshot
  when there is no connection). Only what a merge reads is fetched:
  ``*.json``, ``*.safetensors`` (``*.bin`` when there are none) and
  ``tokenizer.model``.
* A PEFT adapter folder given as a model (not as the base) is
  ``BASE+ADAPTER``, with the config's ``base_model``.
* A PyTorch pickle checkpoint (``pytorch_model.bin`` or its shards, a
  ``.bin``/``.pt``/``.pth`` file) is converted to safetensors the same way
  (``torch.load(weights_only=True)``), as the Go engine reads safetensors.
* ``MODEL+LORA`` (mergekit's syntax; each side a path or a Hub id) is MODEL
  with the PEFT LoRA adapter LORA merged in (:mod:`npsfuse._peft`, PEFT's
  ``merge_and_unload`` weights). It is written, shard by shard (peak memory:
  one shard of MODEL plus the adapter), into a temporary folder beside the
  output that is removed when the merge ends, as mergekit writes it into its
  ``lora_merge_cache``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

#: A Hub repository id: ``name`` or ``org/name`` (letters, digits, ``-_.``).
_REPO = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Files of a model folder that a merge reads or copies besides the weights.
_AUX = ("*.json", "tokenizer.model")


def is_hub_id(ref: str) -> bool:
    """Whether ``ref`` (``org/name`` with an optional ``@revision``) names a
    Hub repository rather than a local path: it does not exist locally and
    has the shape of a repository id (``org/name``; a bare ``name`` counts
    only when it is not a path)."""
    if not ref or os.path.exists(ref):
        return False
    repo, _, rev = ref.partition("@")
    if "@" in rev or ref.startswith((".", "/", "~")):
        return False
    if os.path.isdir(repo.split("/")[0]):  # "models/ft" beside "models/": a local typo
        return False
    return "/" in repo and bool(_REPO.match(repo))


def _cache_dir() -> str | None:
    """The Hub cache (read at call time, so that a test or a notebook can
    set ``HF_HUB_CACHE``/``HF_HOME`` after ``huggingface_hub`` is imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_path(ref: str, what: str = "model") -> str:
    """The local folder of Hub id ``ref`` (``org/name[@revision]``), from the
    cache or downloaded.

    Raises
    ------
    ImportError
        ``huggingface_hub`` is missing (the ``hub`` extra).
    FileNotFoundError
        The repository is not cached and cannot be downloaded (offline, or
        no such repository/revision); the message names ``what`` and ``ref``.
    """
    from ._extras import need

    hf = need("huggingface_hub", "hub", f"{what} {ref!r} (a Hugging Face Hub id)")
    repo, _, rev = ref.partition("@")
    kw: dict[str, Any] = {"revision": rev or None, "cache_dir": _cache_dir()}
    offline = _offline()
    if offline or re.fullmatch(r"[0-9a-f]{40}", rev):
        # Offline, or a commit (immutable): the cache, without a request.
        try:
            return str(hf.snapshot_download(repo, local_files_only=True, **kw))
        except Exception as exc:  # not cached
            if offline:
                raise _not_found(what, ref, exc, offline) from None
    try:  # online: a branch or tag is checked for updates, as huggingface_hub does
        files = hf.list_repo_files(repo, revision=rev or None)
        weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]
        return str(hf.snapshot_download(repo, allow_patterns=[*_AUX, *weights], **kw))
    except Exception as exc:  # the hub's errors: not found, gated, no connection
        try:  # no connection: the cache may still have it
            return str(hf.snapshot_download(repo, local_files_only=True, **kw))
        except Exception:  # noqa: BLE001 - the first error says more
            raise _not_found(what, ref, exc, offline) from None


def _not_found(what: str, ref: str, exc: Exception, offline: bool) -> FileNotFoundError:
    where = _cache_dir() or "the default Hugging Face cache"
    return FileNotFoundError(
        f"{what} {ref!r} does not exist locally and is not a Hugging Face Hub repository in "
        f"{where}{' (HF_HUB_OFFLINE is set)' if offline else ''}: "
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    )


def local_path(ref: str, what: str = "model") -> str:
    """``ref`` as a local path: itself, or the cached snapshot of a Hub id."""
    return hub_path(ref, what) if is_hub_id(ref) else ref


def split_lora(ref: str) -> tuple[str, str | None]:
    """mergekit's ``MODEL+LORA`` split (``+`` at most once)."""
    if "+" not in ref or os.path.exists(ref):
        return ref, None
    parts = ref.split("+")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"cannot read model reference {ref!r}: write MODEL or MODEL+LORA")
    return parts[0], parts[1]


# --------------------------------------------------------------------------
# Configs


def _refs(conf: Mapping[str, Any]) -> Iterator[tuple[Any, Any, str]]:
    """(container, key, where) of every model reference of a config:
    ``base_model``, ``tokenizer_source`` (a model), ``models[].model``,
    ``slices[].sources[].model``, and in the ``tokenizer:`` block its
    ``source`` (a model) and each ``tokens:`` rule's ``source`` (a model, or
    a ``model_token``'s ``model``). daemon/jobs/prepare.go's modelRefs lists
    the same."""
    if isinstance(conf.get("base_model"), str):
        yield conf, "base_model", "base_model"
    if conf.get("tokenizer_source") not in (None, "base", "union") and isinstance(
        conf.get("tokenizer_source"), str
    ):
        yield conf, "tokenizer_source", "tokenizer_source"
    for i, m in enumerate(conf.get("models") or []):
        if isinstance(m, Mapping) and isinstance(m.get("model"), str):
            yield m, "model", f"models[{i}].model"
    for i, s in enumerate(conf.get("slices") or []):
        for j, src in enumerate((s or {}).get("sources") or [] if isinstance(s, Mapping) else []):
            if isinstance(src, Mapping) and isinstance(src.get("model"), str):
                yield src, "model", f"slices[{i}].sources[{j}].model"
    tok = conf.get("tokenizer")
    if not isinstance(tok, Mapping):
        return
    if isinstance(tok.get("source"), str) and tok["source"] not in ("", "base", "union"):
        yield tok, "source", "tokenizer.source"
    rules = tok.get("tokens")
    for name, rule in (rules or {}).items() if isinstance(rules, Mapping) else ():
        src = rule.get("source") if isinstance(rule, Mapping) else None
        if isinstance(src, str) and src:
            yield rule, "source", f"tokenizer.tokens[{name!r}].source"
        elif isinstance(src, Mapping) and isinstance(src.get("model"), str):
            yield src, "model", f"tokenizer.tokens[{name!r}].source.model"


def needs_resolving(conf: Any) -> bool:
    """Whether a parsed config names a Hub id or a ``model+lora``."""
    if not isinstance(conf, Mapping):
        return False
    from ._paths import is_adapter_path

    return any(
        split_lora(c[k])[1] is not None
        or is_hub_id(c[k])
        or (k == "model" and is_adapter_path(c[k]))
        or is_pickle_checkpoint(c[k])
        for c, k, _ in _refs(conf)
        if c[k]
    )


def resolve_config(conf: Mapping[str, Any], scratch: str | os.PathLike) -> dict[str, Any]:
    """A copy of ``conf`` whose model references are local folders: Hub ids
    resolved to their cached snapshots, ``model+lora`` (and an adapter folder
    or a pickle checkpoint given as a model) written as safetensors into
    ``scratch/inputs/<digest>``. A reference used several times is resolved
    once. Nothing is created outside ``scratch``; the caller removes it.

    Raises
    ------
    ValueError
        A malformed reference, or an adapter that does not fit its model.
    FileNotFoundError
        A Hub id that is not cached and cannot be downloaded.
    """
    from . import _peft

    conf = json.loads(json.dumps(conf))  # a deep copy, in plain types
    inputs = Path(os.path.abspath(os.fspath(scratch))) / "inputs"
    done: dict[str, str] = {}
    for c, k, where in _refs(conf):
        ref = c[k]
        if ref in done:
            c[k] = done[ref]
            continue
        model, lora = split_lora(ref)
        path = local_path(model, where)
        if lora is None and k == "model" and _peft.is_adapter_path(path):
            # An adapter folder alone: LoRA of the base model (npsfuse's
            # extension; mergekit wants BASE+ADAPTER).
            if not isinstance(conf.get("base_model"), str):
                raise ValueError(
                    f"{where}: {ref!r} is a PEFT LoRA adapter folder; it needs "
                    "a base_model to be merged into (or write MODEL+ADAPTER)"
                )
            model, lora, path = conf["base_model"], path, local_path(conf["base_model"])
        if lora is not None or is_pickle_checkpoint(path):
            inputs.mkdir(parents=True, exist_ok=True)
            out = inputs / hashlib.sha1(ref.encode()).hexdigest()[:12]
            write_merged(
                path, None if lora is None else local_path(lora, f"{where} (LoRA)"), out, where
            )
            path = str(out)
        done[ref] = c[k] = path
    return conf


def is_pickle_checkpoint(path: str) -> bool:
    """Whether ``path`` is a PyTorch pickle checkpoint (a ``.bin``/``.pt``/
    ``.pth`` file, or a folder with ``pytorch_model.bin`` or its shards and no
    safetensors), which the Go engine does not read."""
    from ._paths import _has_safetensors, pickle_files

    p = Path(path)
    if not p.exists() or _peft_adapter(path):
        return False
    if p.is_dir() and _has_safetensors(p):
        return False
    return bool(pickle_files(p))


def _peft_adapter(path: str) -> bool:
    from ._paths import is_adapter_path

    return is_adapter_path(path)


def _shards(model: str) -> list[tuple[Path, str]]:
    """(source file, output name) of each weights file of ``model``: its
    safetensors shards as they are, or its pickle files renamed to
    safetensors (``model.safetensors`` or ``model-0000k-of-0000N``)."""
    from ._state import pickle_files, safetensors_files

    if is_pickle_checkpoint(model):
        files = pickle_files(model)
        if len(files) == 1:
            return [(files[0], "model.safetensors")]
        return [
            (f, f"model-{i + 1:05d}-of-{len(files):05d}.safetensors") for i, f in enumerate(files)
        ]
    return [(f, f.name) for f in safetensors_files(model)]


def write_merged(model: str, lora: str | None, out: Path, what: str = "model") -> None:
    """Write ``model`` with the LoRA adapter ``lora`` merged in (``None``:
    as it is, converted from PyTorch pickles) to folder ``out`` as
    safetensors: the same shards (and index), ``config.json`` and the
    tokenizer files copied. One shard is in memory at a time; pickles are
    loaded with ``torch.load(weights_only=True)``.

    Raises
    ------
    ValueError
        ``lora`` is not a LoRA adapter folder, or names a tensor ``model``
        lacks; a pickle that holds anything but tensors.
    FileNotFoundError
        ``model`` has no weights.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from . import _peft
    from ._state import _load_pickle

    adapter = None
    if lora is not None:
        if not _peft.is_adapter_path(lora):
            raise ValueError(
                f"{what}: the LoRA {lora!r} is not a PEFT LoRA adapter folder (no "
                f"{_peft.CONFIG_FILE})"
            )
        adapter = _peft.read_adapter(lora, what)
    shards = _shards(model)
    pickled = is_pickle_checkpoint(model)
    out.mkdir(parents=True)
    src = Path(model) if Path(model).is_dir() else Path(model).parent
    for f in src.iterdir():
        skip = f.name.endswith(".safetensors") or (
            pickled
            and (f.suffix in (".bin", ".pt", ".pth") or f.name == "pytorch_model.bin.index.json")
        )
        if f.is_file() and not skip:
            shutil.copy2(f, out / f.name)
    seen: set[str] = set()
    weight_map: dict[str, str] = {}
    for source, name in shards:
        if source.suffix == ".safetensors":
            with safe_open(str(source), framework="pt") as fh:
                meta = fh.metadata()
                sd = {n: fh.get_tensor(n) for n in fh.keys()}  # noqa: SIM118 - not a dict
        else:
            sd, meta = _load_pickle(source, what), None
        seen.update(sd)
        weight_map.update(dict.fromkeys(sd, name))
        if adapter is not None:
            part = _peft.Adapter(
                what=adapter.what,
                loras={m: lo for m, lo in adapter.loras.items() if f"{m}.weight" in sd},
                full={n: t for n, t in adapter.full.items() if n in sd},
            )
            sd = _peft.apply(sd, part)
        save_file(
            {n: t.contiguous() for n, t in sd.items()},
            str(out / name),
            metadata=meta or {"format": "pt"},
        )
    if adapter is not None:
        wanted = set(adapter.full) | {f"{m}.weight" for m in adapter.loras}
        missing = sorted(wanted - seen)
        if missing:
            raise ValueError(
                f"{what}: the adapter {lora!r} names {len(missing)} tensor(s) the "
                f"model {model!r} lacks, e.g. {missing[0]!r}: it was made for "
                "another model"
            )
    if pickled and len(shards) > 1:
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2)
        )
