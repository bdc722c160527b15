"""The Python half of a merge config, for every door: ``npsfuse merge``,
:func:`npsfuse.merge_checkpoints` and the daemon's merge job.

Some of mergekit's config features are prepared in Python before the Go
engine (``arrowio/stream``) sees the config, which then names local folders
only:

* model references (:mod:`npsfuse._hub`): Hugging Face Hub ids become their
  cached snapshots, ``MODEL+LORA`` (and an adapter folder or a PyTorch
  pickle checkpoint given as a model) is written as safetensors into
  ``SCRATCH/inputs``;
* tokenizer keys (:mod:`npsfuse._tokenizer`): ``tokenizer_source``, the
  ``tokenizer:`` block and ``chat_template`` give the merged tokenizer,
  saved into ``SCRATCH/tokenizer``, and its per-model row maps, in the
  internal ``npsfuse_vocabulary`` key.

:func:`prepare` is the one implementation. ``merge_checkpoints`` calls it
with a scratch folder beside ``out_dir``; the daemon (``daemon/jobs/merge.go``)
runs ``python -m npsfuse._prepare SCRATCH`` with the config as JSON on stdin,
and reads one JSON line on stdout (:func:`answer`, the protocol of the
daemon's Python commands): ``{"config": PREPARED}``, or on failure
(exit status 1) ``{"error": {"kind": KIND, "message": TEXT}}`` where KIND is
``invalid_input``, ``not_found``, ``permission``, ``failed_precondition``
(an optional dependency missing) or ``internal``. Everything created lies
under SCRATCH, which the caller removes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any


def needs_preparing(config: Any) -> bool:
    """Whether a parsed config names a Hub id, a ``model+lora``, an adapter
    folder or pickle checkpoint as a model, or has tokenizer keys without
    row maps yet: whether :func:`prepare` changes it."""
    if not isinstance(config, Mapping):
        return False
    from ._hub import needs_resolving
    from ._tokenizer import needs_tokenizer

    return needs_resolving(config) or (
        "npsfuse_vocabulary" not in config and needs_tokenizer(config)
    )


def prepare(config: Mapping[str, Any], scratch_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``config`` as the Go engine reads it: model references resolved to
    local folders, the merged tokenizer built and its row maps set.

    Parameters
    ----------
    config
        A mergekit merge config (one document, parsed).
    scratch_dir
        A folder (created if missing) for what preparation writes: merged
        LoRA inputs (``inputs/``) and the merged tokenizer (``tokenizer/``).
        The prepared config names paths inside it; the caller removes it
        once the merge is over.

    Returns
    -------
    dict
        A new config (``config`` is not changed). Without anything to
        prepare, a plain copy.

    Raises
    ------
    ValueError
        A malformed reference, an adapter that does not fit its model, a
        bad tokenizer rule.
    FileNotFoundError
        A Hub id that is not cached and cannot be downloaded.
    ImportError
        An optional dependency the config needs (``huggingface_hub``,
        ``transformers``, ``torch``) is missing.
    """
    from ._hub import needs_resolving, resolve_config
    from ._tokenizer import needs_tokenizer, vocabulary

    scratch = os.path.abspath(os.fspath(scratch_dir))
    os.makedirs(scratch, exist_ok=True)
    conf: dict[str, Any] = json.loads(json.dumps(dict(config)))
    if needs_resolving(conf):
        conf = resolve_config(conf, scratch)
    if "npsfuse_vocabulary" not in conf and needs_tokenizer(conf):
        tok = os.path.join(scratch, "tokenizer")
        os.makedirs(tok, exist_ok=True)
        conf["npsfuse_vocabulary"] = vocabulary(conf, tok)
    return conf


def error_kind(exc: BaseException) -> str:
    """The daemon's error kind of an exception raised by :func:`prepare`
    (``gocore/fault``'s taxonomy, by name)."""
    if isinstance(exc, ImportError):
        return "failed_precondition"
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, FileExistsError):
        return "already_exists"
    if isinstance(exc, PermissionError):
        return "permission"
    if isinstance(exc, (ValueError, TypeError, KeyError, IsADirectoryError, NotADirectoryError)):
        return "invalid_input"
    return "internal"


def answer(
    args: list[str],
    usage: str,
    run: Callable[[Any, str, Callable[[str], None]], dict[str, Any]],
) -> int:
    """The daemon's protocol with its Python commands (``npsfuse._prepare``,
    ``npsfuse._mergekit_job``): ``args`` is ``[SCRATCH]``, the request is JSON
    on stdin, and ``run(request, scratch, progress)`` returns the answer
    (one JSON line on stdout); ``progress(message)`` writes a line
    ``{"progress": {"message": ...}}`` before it. A failure is the line
    ``{"error": {"kind": KIND, "message": TEXT}}`` (:func:`error_kind`).
    Whatever a library prints goes to stderr. Returns the exit status: 0,
    1 on a failure, 2 on a bad invocation."""
    out = sys.stdout
    if len(args) != 1:
        print(usage, file=sys.stderr)
        return 2

    def progress(message: str) -> None:
        out.write(json.dumps({"progress": {"message": message}}) + "\n")
        out.flush()

    try:
        request = json.load(sys.stdin)
        sys.stdout = sys.stderr
        try:
            result = run(request, args[0], progress)
        finally:
            sys.stdout = out
    except Exception as exc:  # noqa: BLE001 - every failure is reported as one line
        msg = str(exc) or type(exc).__name__
        if isinstance(exc, json.JSONDecodeError):
            msg = f"config on stdin is not JSON: {exc}"
        kind = "invalid_input" if isinstance(exc, json.JSONDecodeError) else error_kind(exc)
        if kind == "internal":
            msg = f"{type(exc).__name__}: {msg}"
        out.write(json.dumps({"error": {"kind": kind, "message": msg}}) + "\n")
        out.flush()
        return 1
    out.write(json.dumps(result) + "\n")
    out.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m npsfuse._prepare SCRATCH``: the config as JSON on stdin,
    one JSON line on stdout (see the module's docstring); 0 on success, 1
    on a failure of preparation, 2 on a bad invocation."""

    def run(config: Any, scratch: str, progress: Callable[[str], None]) -> dict[str, Any]:
        if not isinstance(config, dict):
            raise ValueError("the config must be a mapping: merge_method, base_model, models")
        return {"config": prepare(config, scratch)}

    return answer(
        sys.argv[1:] if argv is None else argv,
        "usage: python -m npsfuse._prepare SCRATCH_DIR < config.json",
        run,
    )


if __name__ == "__main__":
    sys.exit(main())
