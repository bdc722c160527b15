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
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
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
        The merge config (``base_model``, ``models``, the tokenizer keys).
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
        ``tokenizer_dir``.

    Raises
    ------
    ValueError
        Both ``tokenizer_source`` and ``tokenizer``, an unknown source, a
        ``tokens:`` rule naming a model that is not merged, a bad template.
    """
    if config.get("slices") is not None:
        raise ValueError(
            "tokenizer_source, tokenizer: and chat_template with slices: are not supported yet: "
            "merge the slices first, then merge the vocabularies"
        )
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
    base = 0  # mergekit: the base model, else the first model
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
    # Each token's source where some model lacks it (or a rule forces it).
    defaults = []
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    for t, i in by_id:
        rule = rules.get(t)
        force = bool(rule.get("force")) if isinstance(rule, Mapping) else False
        present = [k for k in range(len(local)) if perms[k][i] >= 0]
        if not force and len(present) == len(local):
            continue
        if force:
            for k in range(len(local)):
                perms[k][i] = -1
        where = f"tokenizer.tokens[{t!r}]"
        src = rule.get("source") if isinstance(rule, Mapping) else None
        if rule is None:
            if len(present) == 1:
                refs = [[present[0], perms_orig(originals, local, present[0], t)]]
            elif not present:
                refs = []
            elif has_base and base in present:
                refs = [[base, perms_orig(originals, local, base, t)]]
            else:
                refs = [[k, perms_orig(originals, local, k, t)] for k in present]
        elif isinstance(src, Mapping) and src.get("kind") == "zero":
            refs = []
        elif isinstance(src, Mapping) and src.get("kind") == "model_token":
            k = _ref(src, where + ".source.model", seen, resolve)
            if (src.get("token") is None) == (src.get("token_id") is None):
                raise ValueError(f"{where}.source: give token or token_id (one of them)")
            if src.get("token_id") is not None:
                row = int(src["token_id"])
            else:
                row = originals[k].get(src["token"], -1)
                if row < 0:
                    raise ValueError(f"{where}.source: token {src['token']!r} is not in {paths[k]}")
            refs = [[k, row]]
        elif isinstance(src, str):
            k = _ref(src, where + ".source", seen, resolve)
            row = perms_orig(originals, local, k, t)
            if row < 0:
                raise ValueError(f"{where}.source: token {t!r} is not in {paths[k]}")
            refs = [[k, row]]
        else:
            raise ValueError(
                f"{where}: give source: a model path, {{kind: zero}} or "
                f"{{kind: model_token, model, token}}; got {rule!r}"
            )
        defaults.append({"row": i, "from": refs})
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
        "defaults": defaults,
    }


def perms_orig(originals: list[dict[str, int]], local: list[str], k: int, token: str) -> int:
    """Model ``k``'s stored row of ``token`` (``-1`` when it lacks it or
    the row is past its ``vocab_size``)."""
    j = originals[k].get(token, -1)
    limit = _config_vocab_size(local[k]) or len(originals[k])
    return j if 0 <= j < limit else -1


@contextlib.contextmanager
def prepared(
    config: Mapping[str, Any], out_dir: str | os.PathLike[str]
) -> Iterator[dict[str, Any]]:
    """The config with ``npsfuse_vocabulary`` set, its tokenizer files in a
    temporary folder beside ``out_dir`` (removed afterwards)."""
    parent = os.path.dirname(os.path.abspath(os.fspath(out_dir))) or "."
    os.makedirs(parent, exist_ok=True)
    d = tempfile.mkdtemp(prefix=".npsfuse-tokenizer-", dir=parent)
    try:
        conf = dict(config)
        conf["npsfuse_vocabulary"] = vocabulary(conf, d)
        yield conf
    finally:
        shutil.rmtree(d, ignore_errors=True)
