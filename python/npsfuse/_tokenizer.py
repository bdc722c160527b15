"""Merged tokenizers for ``npsfuse merge`` (mergekit's ``tokenizer_source``,
``tokenizer:`` block and ``chat_template``), with mergekit 0.1.5's semantics.

The output vocabulary is built here with the ``transformers`` tokenizers
(as mergekit does); what it means for the weights travels to the Go
pipeline (``arrowio/stream/vocab.go``) in the config's
``npsfuse_vocabulary`` key: for every input model, the stored row of each
output token (``-1``: the token's default row), the default rows (a mean
of stored rows, or zeros), the number of tokens and the padded size. Go
applies the row maps when it reads a vocabulary tensor (``embed_tokens``,
``lm_head``, …), so the merge streams as usual.

Rules (mergekit's ``PermutedVocabulary``): a token a model lacks takes, in
that model, the row of the one model that has it, else the base's row when
the base has it, else the mean of the rows of the models that have it, else
zeros; a ``tokens:`` rule gives the source explicitly (a model, ``{kind:
zero}`` or ``{kind: model_token, model, token|token_id}``) and with
``force: true`` applies even where a model has the token. Padding rows
(``pad_to_multiple_of``) are each model's mean of its token rows.

With ``slices:`` (mergekit's ``plan_module``) the tokenizer reads every
model a slice names; the embeddings are merged from the first slice's
sources and the LM head from the last slice's first sources (as many as
the first slice has), each with its slice's base, and the rules above pick
a token's default among those models only: the defaults travel per group
(``slices`` in ``npsfuse_vocabulary``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from typing import Any

#: The config keys that need the merged tokenizer.
KEYS = ("tokenizer_source", "tokenizer", "chat_template")


def needs_tokenizer(config: Mapping[str, Any]) -> bool:
    """Whether ``config`` has a tokenizer key that npsfuse builds in Python."""
    return any(config.get(k) is not None for k in KEYS)


def _norm(path: str) -> str:
    return os.path.normpath(os.fspath(path))


def _config_vocab_size(path: str) -> int | None:
    """``vocab_size`` of the model's ``config.json`` (``None`` when absent)."""
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    size = cfg.get("vocab_size")
    if size is None and isinstance(cfg.get("text_config"), dict):
        size = cfg["text_config"].get("vocab_size")
    return int(size) if isinstance(size, int) else None


def _load(path: str) -> Any:
    import transformers

    return transformers.AutoTokenizer.from_pretrained(path, use_fast=True)


def _stripped(path: str) -> Any:
    """The model's tokenizer without the tokens whose ids are past the
    model's ``vocab_size`` (BPE tokenizers only, as mergekit)."""
    import tokenizers

    tok = _load(path)
    size = _config_vocab_size(path) or len(tok.get_vocab())
    unused = {t for t, i in tok.get_vocab().items() if i >= size}
    if not unused:
        return tok
    if not tok.is_fast:
        raise ValueError(
            f"{path}: the tokenizer has tokens past vocab_size {size} and no fast "
            "tokenizer: it cannot be merged"
        )
    spec = json.loads(tok._tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise ValueError(
            f"{path}: the tokenizer has tokens past vocab_size {size} and is "
            f"{spec['model']['type']}: only BPE tokenizers can be stripped"
        )
    spec["added_tokens"] = [e for e in spec["added_tokens"] if e["id"] < size]
    for t in unused:
        spec["model"]["vocab"].pop(t, None)

    def keep(m: Any) -> bool:
        parts = m.split(" ") if isinstance(m, str) else list(m)
        return not any(p in unused for p in parts)

    spec["model"]["merges"] = [m for m in spec["model"]["merges"] if keep(m)]
    tok._tokenizer = tokenizers.Tokenizer.from_str(json.dumps(spec))
    return tok


def _union(base_tok: Any, toks: dict[str, Any]) -> Any:
    """Every model's tokens: the base's tokenizer, then each model's
    ordinary tokens it lacks, then every added token (first settings win)."""
    ordinary: dict[str, None] = {}
    added: dict[str, Any] = {}
    for path, tok in toks.items():
        size = _config_vocab_size(path) or tok.vocab_size
        decoder = tok.added_tokens_decoder
        added_names = {info.content for info in decoder.values()}
        for t, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if i < size and t not in added_names:
                ordinary.setdefault(t, None)
        for i, info in decoder.items():
            if i < size:
                added.setdefault(info.content, info)
    with tempfile.TemporaryDirectory() as d:  # a copy: base_tok stays as it is
        base_tok.save_pretrained(d, legacy_format=False, safe_serialization=True)
        out = _load(d)
    base_vocab = base_tok.get_vocab()
    for t in ordinary:
        if t not in added and t not in base_vocab:
            out.add_tokens(t)
    for info in added.values():
        out.add_tokens(info)
    return out


def _template(value: str, paths: list[str]) -> str | None:
    """The chat template text of ``chat_template`` (mergekit's rules)."""
    if value == "auto":
        found = []
        for p in paths:
            try:
                t = _load(p).chat_template
            except Exception:  # noqa: BLE001 - a model without a tokenizer has no vote
                continue
            if isinstance(t, dict):
                t = t.get("default")
            if t:
                found.append(t.strip())
        return Counter(found).most_common(1)[0][0] if found else None
    if len(value) < 256 and "\n" not in value and "{" not in value:
        try:
            from importlib.resources import files

            f = files("mergekit._data.chat_templates").joinpath(value + ".jinja")
        except ModuleNotFoundError:
            raise ValueError(
                f"chat_template {value!r}: the named templates are mergekit's files; "
                "install mergekit or give the template's text"
            ) from None
        if f.is_file():
            return f.read_text()
    if len(value) < 20 or "{" not in value:
        raise ValueError(
            f"chat_template {value!r} is neither a known template name "
            "(alpaca, chatml, exaone, llama3, mistral), auto, nor a Jinja template"
        )
    return value


def _ref(value: Any, where: str, index: dict[str, int], resolve: Any) -> int:
    """The row-map index of a model named in a ``tokens:`` rule."""
    if isinstance(value, Mapping):
        value = value.get("model")
    if not isinstance(value, str):
        raise ValueError(f"{where}: name a model by its path, got {value!r}")
    k = index.get(_norm(resolve(value)))
    if k is None:
        raise ValueError(f"{where}: {value} is not one of the merge's models")
    return k


def vocabulary(
    config: Mapping[str, Any], tokenizer_dir: str, resolve: Any = lambda p: p
) -> dict[str, Any]:
    """Build the merged tokenizer into ``tokenizer_dir`` and return the
    ``npsfuse_vocabulary`` value for the Go pipeline.

    Parameters
    ----------
    config
        The merge config (``base_model``, ``models`` or ``slices``, the
        tokenizer keys).
    tokenizer_dir
        An empty folder: the merged tokenizer is saved there
        (``save_pretrained``, as mergekit writes it).
    resolve
        Maps a model path as written to the folder to read.

    Returns
    -------
    dict
        ``size``, ``tokens``, ``models`` (``path``, ``rows``), ``defaults``
        (``row``, ``from``: ``[model index, stored row]`` pairs) and
        ``tokenizer_dir``; for a ``slices:`` config ``defaults`` is empty
        and ``slices`` lists the defaults of each group of sources that
        merges vocabulary tensors (``slice``, ``sources``, ``defaults``).

    Raises
    ------
    ValueError
        Both ``tokenizer_source`` and ``tokenizer``, an unknown source, a
        ``tokens:`` rule naming a model that is not merged (in a slices
        config: not among the sources of the tensor the token is merged
        into), a bad template.
    """
    slices = config.get("slices")
    if slices is not None and (not isinstance(slices, list) or not slices):
        raise ValueError("slices must be a non-empty list of {sources: [...]}")
    block = config.get("tokenizer")
    source = config.get("tokenizer_source")
    if block is not None and source is not None:
        raise ValueError("give tokenizer_source or tokenizer, not both")
    rules: dict[str, Any] = {}
    pad = None
    if block is not None:
        if not isinstance(block, Mapping):
            raise ValueError("tokenizer must be a mapping with source, tokens, pad_to_multiple_of")
        source = block.get("source", "union")
        rules = dict(block.get("tokens") or {})
        pad = block.get("pad_to_multiple_of")
        if pad is not None and (not isinstance(pad, int) or pad <= 0):
            raise ValueError(
                f"tokenizer.pad_to_multiple_of must be a positive integer, got {pad!r}"
            )
    written: list[str] = []  # paths as written: base first, then the models
    if config.get("base_model"):
        written.append(str(config["base_model"]))
    for m in config.get("models") or []:
        if isinstance(m, Mapping) and m.get("model"):
            written.append(str(m["model"]))
    for sl in slices or []:  # mergekit: every model a slice reads
        for src in _sources(sl):
            if src.get("model"):
                written.append(str(src["model"]))
    seen: dict[str, int] = {}
    paths: list[str] = []
    for w in written:
        if _norm(resolve(w)) not in seen:
            seen[_norm(resolve(w))] = len(paths)
            paths.append(w)
    if not paths:
        raise ValueError("the config names no models")
    local = [resolve(p) for p in paths]
    for w, p in zip(paths, local, strict=True):
        if not os.path.isdir(p):
            raise ValueError(f"model {w} is not a folder: the merged tokenizer reads each model's")
    base = 0  # mergekit: the base model, else the first model (by set order there)
    has_base = bool(config.get("base_model"))
    chat = config.get("chat_template")
    if source is None:  # chat_template alone: the base's tokenizer, re-saved with it
        tok = _load(local[base])
        t = _template(str(chat), local)
        if t is not None:
            tok.chat_template = t
        tok.save_pretrained(tokenizer_dir, safe_serialization=True)
        return {
            "size": 0,
            "tokens": 0,
            "models": [],
            "defaults": [],
            "tokenizer_dir": tokenizer_dir,
        }
    base_tok = _stripped(local[base])
    toks: dict[str, Any] = {local[base]: base_tok}
    for p in local[1:]:
        with contextlib.suppress(Exception):  # mergekit: assume the base's tokenizer
            toks[p] = _load(p)
    if source == "base":
        out = base_tok
    elif source == "union":
        out = _union(base_tok, toks)
    elif isinstance(source, str):
        k = seen.get(_norm(resolve(source)))
        out = _load(local[k] if k is not None else resolve(source))
    else:
        raise ValueError(f"tokenizer source must be base, union or a model path, got {source!r}")
    have = set(out.get_vocab())
    for t in rules:
        if t not in have:
            out.add_tokens(t)
            have.add(t)
    vocab = out.get_vocab()
    tokens = len(vocab)
    if sorted(vocab.values()) != list(range(tokens)):
        raise ValueError(
            "the merged tokenizer's ids are not 0..n-1: it cannot index embedding rows"
        )
    size = tokens
    if pad and size % pad:
        size = (size // pad + 1) * pad
    originals = [toks.get(p, base_tok).get_vocab() for p in local]
    perms: list[list[int]] = []
    for p, orig in zip(local, originals, strict=True):
        limit = _config_vocab_size(p) or len(orig)
        rows = [-1] * tokens
        for t, i in vocab.items():
            j = orig.get(t)
            if j is not None and j < limit:
                rows[i] = j
        perms.append(rows)
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    for t, i in by_id:  # a forced rule replaces every model's own row
        rule = rules.get(t)
        if isinstance(rule, Mapping) and rule.get("force"):
            for rows in perms:
                rows[i] = -1

    def defaults(members: list[int], group_base: int | None, group: str) -> list[dict[str, Any]]:
        """Each token's source where a model of ``members`` (row-map
        indices, in the tensor's order) lacks it or a rule forces it."""
        found = []
        for t, i in by_id:
            rule = rules.get(t)
            force = bool(rule.get("force")) if isinstance(rule, Mapping) else False
            present = [k for k in members if perms[k][i] >= 0]
            if not force and len(present) == len(members):
                continue
            where = f"tokenizer.tokens[{t!r}]"
            src = rule.get("source") if isinstance(rule, Mapping) else None
            if rule is None:
                if len(present) == 1:
                    refs = [[present[0], perms_orig(originals, local, present[0], t)]]
                elif not present:
                    refs = []
                elif group_base is not None and group_base in present:
                    refs = [[group_base, perms_orig(originals, local, group_base, t)]]
                else:
                    refs = [[k, perms_orig(originals, local, k, t)] for k in present]
            elif isinstance(src, Mapping) and src.get("kind") == "zero":
                refs = []
            elif isinstance(src, Mapping) and src.get("kind") == "model_token":
                k = _member(
                    _ref(src, where + ".source.model", seen, resolve), members, where, group, paths
                )
                if (src.get("token") is None) == (src.get("token_id") is None):
                    raise ValueError(f"{where}.source: give token or token_id (one of them)")
                if src.get("token_id") is not None:
                    row = int(src["token_id"])
                else:
                    row = originals[k].get(src["token"], -1)
                    if row < 0:
                        raise ValueError(
                            f"{where}.source: token {src['token']!r} is not in {paths[k]}"
                        )
                refs = [[k, row]]
            elif isinstance(src, str):
                k = _member(
                    _ref(src, where + ".source", seen, resolve), members, where, group, paths
                )
                row = perms_orig(originals, local, k, t)
                if row < 0:
                    raise ValueError(f"{where}.source: token {t!r} is not in {paths[k]}")
                refs = [[k, row]]
            else:
                raise ValueError(
                    f"{where}: give source: a model path, {{kind: zero}} or "
                    f"{{kind: model_token, model, token}}; got {rule!r}"
                )
            found.append({"row": i, "from": refs})
        return found

    groups: list[dict[str, Any]] = []
    if slices is None:
        top_defaults = defaults(list(range(len(local))), base if has_base else None, "")
    else:
        top_defaults = []
        for g in _slice_groups(slices, config.get("base_model"), resolve, seen):
            members, group_base, where = g.pop("members"), g.pop("base"), g.pop("where")
            g["defaults"] = defaults(members, group_base, where)
            groups.append(g)
    if chat is not None:
        t = _template(str(chat), local)
        if t is not None:
            out.chat_template = t
    out.save_pretrained(tokenizer_dir, safe_serialization=True)
    return {
        "size": size,
        "tokens": tokens,
        "tokenizer_dir": tokenizer_dir,
        "models": [{"path": p, "rows": r} for p, r in zip(paths, perms, strict=True)],
        "defaults": top_defaults,
        **({"slices": groups} if slices is not None else {}),
    }


def _sources(sl: Any) -> list[Mapping[str, Any]]:
    """A slice's sources (the malformed ones left out: Go reports them)."""
    srcs = sl.get("sources") if isinstance(sl, Mapping) else None
    return [s for s in srcs if isinstance(s, Mapping)] if isinstance(srcs, list) else []


def _slice_groups(
    slices: list[Any], config_base: Any, resolve: Any, seen: dict[str, int]
) -> list[dict[str, Any]]:
    """The groups of sources that merge a slices config's vocabulary
    tensors (mergekit 0.1.5's ``plan_module``): the embeddings from the
    first slice's sources, the LM head (every tensor after the layers)
    from the last slice's first sources, as many as the first slice has;
    each with its slice's base (``base_model`` of the slice, else of the
    config). Each group: ``slice``, ``sources`` (indices into the slice's
    sources), ``members`` (row-map indices), ``base`` (a row-map index or
    ``None``) and ``where`` (for messages)."""
    first, last = _sources(slices[0]), _sources(slices[-1])
    out = []
    for s, srcs, part in ((0, first, "embeddings"), (len(slices) - 1, last[: len(first)], "head")):
        sl = slices[s]
        b = (sl.get("base_model") if isinstance(sl, Mapping) else None) or config_base
        key = {"slice": s, "sources": list(range(len(srcs)))}
        if any(g["slice"] == s and g["sources"] == key["sources"] for g in out):
            continue  # one slice: the embeddings' and the head's sources are the same
        if any(not x.get("model") for x in srcs):
            raise ValueError(f"slices[{s}]: every source needs a model")
        members = [seen[_norm(resolve(str(x["model"])))] for x in srcs]
        out.append(
            {
                **key,
                "members": members,
                "base": seen.get(_norm(resolve(str(b)))) if b else None,
                "where": f"the {part} (slices[{s}]'s sources)",
            }
        )
    return out


def _member(k: int, members: list[int], where: str, group: str, paths: list[str]) -> int:
    """``k``, checked to be among the models that merge the tensor (in a
    slices merge, mergekit: the model's weight is missing)."""
    if k not in members:
        raise ValueError(
            f"{where}: {paths[k]} is not a source of {group}, which the token's row is merged "
            "into: name one of those sources"
        )
    return k


def perms_orig(originals: list[dict[str, int]], local: list[str], k: int, token: str) -> int:
    """Model ``k``'s stored row of ``token`` (``-1`` when it lacks it or
    the row is past its ``vocab_size``)."""
    j = originals[k].get(token, -1)
    limit = _config_vocab_size(local[k]) or len(originals[k])
    return j if 0 <= j < limit else -1
