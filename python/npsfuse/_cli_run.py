"""``npsfuse prune``, ``npsfuse evolve`` and ``npsfuse search``: searches driven by a YAML config.

Each command reads one YAML config, checks it strictly (an unknown field is
refused, naming it, with "did you mean" when it looks like a typo; a value of
the wrong type names its field), imports the evaluation hook the config names
(``evaluate: module:function``) and calls the same Python function a notebook
calls, with the same arguments: :func:`npsfuse.nps.prune`,
:class:`npsfuse.Evolver` (``.run()``) and :func:`npsfuse.search_merge`. So a
config gives the same result, bit for bit, on the command line and in Python.

The hook is ``evaluate(state_dict) -> float`` (higher is better), called with
``evaluate_kwargs`` as keyword arguments when the config has them. ``module``
is imported with the config file's folder and the working directory on
``sys.path``; ``path/to/file.py:function`` loads a file (relative to the
config's folder).

Outputs are written atomically (a temporary name beside the target, renamed
over it when complete): ``prune`` writes one NPS result file
(:meth:`npsfuse.nps.NPSResult.save`); ``evolve`` and ``search`` write a folder
holding ``model.safetensors``, ``result.json`` (scores, history, the searched
parameters) and the base's ``config.json`` when the base is a folder with one.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import importlib
import importlib.util
import inspect
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

# Field kinds of the config schemas. Each checker returns an error text
# (without the field name) or None.
Check = Callable[[Any], "str | None"]


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kind(ok: Callable[[Any], bool], what: str) -> Check:
    """The checker of one kind: None when ``ok(v)``, else "must be WHAT, got V"."""
    return lambda v: None if ok(v) else f"must be {what}, got {v!r}"


_num = _kind(_is_num, "a number")
_int = _kind(lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number")
_bool = _kind(lambda v: isinstance(v, bool), "true or false")
_str = _kind(lambda v: isinstance(v, str) and bool(v), "a non-empty string")
_pair = _kind(lambda v: isinstance(v, list) and len(v) == 2 and all(_is_num(x) for x in v),
              "a list of two numbers [lo, hi]")
_strs = _kind(lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
              "a list of strings")
_mapping = _kind(lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
                 "a mapping of names to values")


def _boxes(v: Any) -> str | None:
    if _mapping(v) is not None:
        return _mapping(v)
    for k, box in v.items():
        if _pair(box) is not None:
            return f"{k}: {_pair(box)}"
    return None


def _optional(check: Check) -> Check:
    """``check``, and None (no error) for a null value."""
    return lambda v: None if v is None else check(v)


#: Fields every command takes: the hook.
_HOOK: dict[str, Check] = {"evaluate": _str, "evaluate_kwargs": _mapping}

#: ``npsfuse prune``: the keywords of :func:`npsfuse.nps.prune` (``progress`` is ``--quiet``).
PRUNE: dict[str, Check] = {
    "base": _str, "finetuned": _str, **_HOOK,
    "density": _num, "subspaces": _int, "kind": _str, "optimizer": _str, "generations": _int,
    "popsize": _optional(_int), "bounds": _pair, "per_layer": _bool, "scope": _str,
    "rank": _optional(_int), "seed": _int, "optimizer_options": _optional(_mapping),
}

#: ``npsfuse evolve``: the keywords of :class:`npsfuse.Evolver`.
EVOLVE: dict[str, Check] = {
    "base": _str, "population": _strs, **_HOOK,
    "strategy": _str, "F": _num, "CR": _num, "schedule": _str,
    "F_bounds": _optional(_pair), "CR_bounds": _optional(_pair), "period": _optional(_int),
    "generations": _int, "merge": _optional(_str), "merge_params": _optional(_mapping),
    "add_merges": _strs, "exclude": _strs, "include": _optional(_strs), "granularity": _str,
    "block_size": _int, "force_index": _optional(_bool), "compute_dtype": _str,
    "storage": _str, "seed": _int,
}

#: ``npsfuse search``: the keywords of :func:`npsfuse.search_merge`.
SEARCH: dict[str, Check] = {
    "base": _str, "models": _strs, "method": _str, **_HOOK,
    "params": _optional(_boxes), "per_model": _bool, "optimizer": _str, "schedule": _str,
    "strategy": _str, "F": _num, "CR": _num, "F_bounds": _pair, "CR_bounds": _pair,
    "generations": _int, "popsize": _optional(_int), "sigma0": _optional(_num),
    "merge_params": _optional(_mapping), "seed": _int,
}

#: Old field names still read for one release (with a deprecation message on
#: stderr), as the Python API's deprecated aliases (:mod:`npsfuse._vocab`).
RENAMED: dict[str, dict[str, str]] = {
    "prune": {"keep": "density"},
    "search": {"fixed": "merge_params"},
}

_REQUIRED = {"prune": ("base", "finetuned", "evaluate"),
             "evolve": ("base", "population", "evaluate"),
             "search": ("base", "models", "method", "evaluate")}
_SCHEMAS = {"prune": PRUNE, "evolve": EVOLVE, "search": SEARCH}
#: Fields that are model paths (resolved against the config's folder).
_PATHS = ("base", "finetuned", "population", "models")


def _suggest(name: str, known: list[str], renamed: Mapping[str, str] | None = None) -> str:
    """The hint "(did you mean 'x'?)" for the known field closest to ``name``;
    when a deprecated old name (``renamed``) is closest, its new name."""
    renamed = renamed or {}
    names = [*known, *renamed]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if not close:
        low = {k.lower(): k for k in names}
        close = [low[name.lower()]] if name.lower() in low else []
    return f" (did you mean {renamed.get(close[0], close[0])!r}?)" if close else ""


def load_config(path: str | os.PathLike[str], command: str) -> dict[str, Any]:
    """Read and check the YAML config of ``command`` (``prune``, ``evolve``, ``search``).

    Model paths (``base``, ``finetuned``, ``population``, ``models``) are
    resolved against the config file's folder; the other values are returned
    as written.

    Raises
    ------
    ValueError
        Not a mapping, an unknown field (with the closest known name), a
        missing required field, or a value of the wrong type; the message
        names the file and the field.
    FileNotFoundError
        The file does not exist.
    """
    import yaml

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config {str(p)!r} does not exist")
    if not p.is_file():
        raise ValueError(f"config {str(p)!r} is not a regular file")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: the config must be a mapping of fields, got "
                         f"{type(raw).__name__}")
    schema = _SCHEMAS[command]
    known = sorted(schema)
    problems = []
    renamed = RENAMED.get(command, {})
    for old, new in renamed.items():
        if old not in raw:
            continue
        if new in raw:
            problems.append(f"both {old!r} (deprecated) and {new!r} are given; keep only {new!r}")
            continue
        print(f"npsfuse {command}: {p}: field {old!r} is deprecated, use {new!r} (the old "
              "name goes in the next release)", file=sys.stderr)
        raw = {(new if k == old else k): v for k, v in raw.items()}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in schema:
            problems.append(f"unknown field {key!r}{_suggest(str(key), known, renamed)}")
            continue
        msg = schema[key](value)
        if msg is not None:
            problems.append(f"{key} {msg}")
    for key in _REQUIRED[command]:
        if key not in raw:
            problems.append(f"missing required field {key!r}")
    if problems:
        raise ValueError(f"{p}: " + "; ".join(problems)
                         + f" (fields of `npsfuse {command}`: {', '.join(known)})")
    root = p.resolve().parent
    cfg = dict(raw)
    for key in _PATHS:
        if key in cfg:
            cfg[key] = ([_resolve(root, x) for x in cfg[key]] if isinstance(cfg[key], list)
                        else _resolve(root, cfg[key]))
    cfg["_root"] = str(root)
    return cfg


def _resolve(root: Path, path: str) -> str:
    return str(root / Path(path).expanduser())


def load_hook(spec: str, root: str | os.PathLike[str] | None = None,
              kwargs: Mapping[str, Any] | None = None) -> Callable[[Any], float]:
    """The evaluation function an entry point ``module:function`` names.

    Parameters
    ----------
    spec
        ``package.module:function`` (imported with ``root`` and the working
        directory on ``sys.path``) or ``path/to/file.py:function`` (relative
        to ``root``). ``function`` may be dotted (``module:Class.method``).
    root
        The config file's folder.
    kwargs
        Keyword arguments bound to the function (``evaluate_kwargs``).

    Raises
    ------
    ValueError
        A malformed spec, a module or attribute that cannot be found, or an
        object that is not callable; the message names ``evaluate``.
    """
    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(f"evaluate must be an entry point 'module:function', got {spec!r}")
    base = Path(root) if root is not None else Path.cwd()
    try:
        if mod_name.endswith(".py") or "/" in mod_name or os.sep in mod_name:
            file = (base / mod_name).resolve()
            if not file.is_file():
                raise ValueError(f"evaluate: file {str(file)!r} does not exist")
            name = f"_npsfuse_hook_{abs(hash(str(file)))}"
            loader_spec = importlib.util.spec_from_file_location(name, file)
            if loader_spec is None or loader_spec.loader is None:
                raise ValueError(f"evaluate: cannot load {str(file)!r} as a Python file")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
        else:
            for d in (str(Path.cwd()), str(base)):
                if d not in sys.path:
                    sys.path.insert(0, d)
            module = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"evaluate: cannot import module {mod_name!r} ({exc})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ValueError(f"evaluate: {mod_name!r} has no attribute {attr!r}"
                             f"{_suggest(part, names)}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"evaluate: {spec!r} is not callable")
    return functools.partial(obj, **kwargs) if kwargs else obj


def _api_kwargs(cfg: Mapping[str, Any], skip: tuple[str, ...]) -> dict[str, Any]:
    """The config's fields as API keywords (lists → tuples for bounds)."""
    out = {k: v for k, v in cfg.items() if k not in skip and not k.startswith("_")
           and k not in ("evaluate", "evaluate_kwargs")}
    for k in ("bounds", "F_bounds", "CR_bounds"):
        if isinstance(out.get(k), list):
            out[k] = tuple(out[k])
    if isinstance(out.get("params"), dict):
        out["params"] = {k: tuple(v) for k, v in out["params"].items()}
    return out


def _hook(cfg: Mapping[str, Any]) -> Callable[[Any], float]:
    return load_hook(cfg["evaluate"], cfg["_root"], cfg.get("evaluate_kwargs"))


# ------------------------------------------------------------- outputs --

def _check_target(out: Path, force: bool, folder: bool) -> None:
    if out.exists():
        if folder and not out.is_dir():
            raise NotADirectoryError(f"{str(out)!r} exists and is not a folder")
        if not folder and out.is_dir():
            raise IsADirectoryError(f"{str(out)!r} is a folder; give a file name")
        if not force and (not folder or any(out.iterdir())):
            raise FileExistsError(f"{str(out)!r} exists (use --force to replace it)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder {str(out.parent)!r} does not exist")


def _write_folder(out: Path, write: Callable[[Path], None]) -> None:
    """Fill a fresh temporary folder beside ``out`` with ``write``, then rename
    it to ``out`` (an old ``out`` is replaced only once the new one is
    complete); nothing is left behind when ``write`` fails or is interrupted."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = None
    try:
        write(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.rename(out, old / out.name)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.rename(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _save_model(folder: Path, sd: Mapping[str, Any], base: str, result: Mapping[str, Any]) -> None:
    from safetensors.torch import save_file

    from .evolve import _unshared

    save_file(_unshared(sd), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "result.json").write_text(json.dumps(result, indent=1, default=_json_default)
                                        + "\n")
    b = Path(base)
    if b.is_dir() and (b / "config.json").is_file():
        shutil.copyfile(b / "config.json", folder / "config.json")


def _json_default(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"cannot write {type(x).__name__} as JSON")


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# ------------------------------------------------------------ commands --

def _start(
    args: argparse.Namespace, command: str, out: Path, folder: bool
) -> tuple[dict[str, Any], Callable[[Any], float], Path | None]:
    """The checked config of ``command`` (``out`` checked as its output), its
    evaluate hook and its ``--checkpoint`` (``None`` without one). An existing
    checkpoint needs ``--resume`` or ``--force``; with ``--force`` a checkpoint
    file is removed (``evolve``'s checkpoint folder is replaced by the new run)."""
    cfg = load_config(args.config, command)
    _check_target(out, args.force, folder=folder)
    evaluate = _hook(cfg)
    ck = None if args.checkpoint is None else Path(args.checkpoint)
    if ck is not None and ck.exists() and not args.resume:
        if not args.force:
            raise FileExistsError(f"checkpoint {str(ck)!r} exists (use --resume to continue "
                                  "it, or --force to start again)")
        if command != "evolve":
            ck.unlink()
    return cfg, evaluate, ck


def run_prune(args: argparse.Namespace) -> int:
    """``npsfuse prune CONFIG OUT``: :func:`npsfuse.nps.prune`, result saved to OUT."""
    from . import nps

    out = Path(args.output)
    cfg, evaluate, ck = _start(args, "prune", out, folder=False)
    kw = _api_kwargs(cfg, ("base", "finetuned"))
    with _hint(ck):
        res = nps.prune(cfg["base"], cfg["finetuned"], evaluate, progress=not args.quiet,
                        checkpoint=ck, **kw)
    res.save(out)
    if not args.quiet:
        print(f"{out}: score {res.score:.6g} (magnitude top-k start {res.start_score:.6g}), "
              f"kept {res.kept:,} entries")
    return 0


@contextlib.contextmanager
def _hint(checkpoint: Path | None) -> Iterator[None]:
    """On Ctrl-C, say how to continue from the checkpoint (when there is one)."""
    try:
        yield
    except KeyboardInterrupt:
        if checkpoint is not None and checkpoint.exists():
            print(f"npsfuse: {checkpoint} holds the run so far; run the same command with "
                  "--resume to continue it", file=sys.stderr)
        raise


def run_evolve(args: argparse.Namespace) -> int:
    """``npsfuse evolve CONFIG OUT_DIR``: :class:`npsfuse.Evolver` ``.run()``."""
    from .evolve import Evolver

    out = Path(args.out_dir)
    cfg, evaluate, ck = _start(args, "evolve", out, folder=True)
    kw = _api_kwargs(cfg, ("base", "population"))
    if "storage" in kw and kw["storage"] != "memory":
        kw["storage"] = _resolve(Path(cfg["_root"]), kw["storage"])
    if ck is not None and args.resume and ck.exists():
        ev = Evolver.resume(ck, evaluate)
    else:
        ev = Evolver(cfg["base"], cfg["population"], evaluate, **kw)
    with _hint(ck):
        res = ev.run(checkpoint=ck, progress=not args.quiet)
    summary = {"best_score": _finite(res.best_score), "best_index": res.best_index,
               "merge": res.merge, "history": res.history}
    _write_folder(out, lambda d: _save_model(d, res.state_dict(), cfg["base"], summary))
    if not args.quiet:
        print(f"{out}: best score {res.best_score:.6g}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    """``npsfuse search CONFIG OUT_DIR``: :func:`npsfuse.search_merge`."""
    from .evolve import search_merge

    out = Path(args.out_dir)
    cfg, evaluate, ck = _start(args, "search", out, folder=True)
    kw = _api_kwargs(cfg, ("base", "models", "method"))
    with _hint(ck):
        res = search_merge(cfg["base"], cfg["models"], cfg["method"], evaluate,
                           progress=not args.quiet, checkpoint=ck, **kw)
    summary = {"method": cfg["method"], "params": res.params,
               "best_score": _finite(res.best_score), "start_score": _finite(res.start_score),
               "history": res.history}
    _write_folder(out, lambda d: _save_model(d, res.state_dict(), cfg["base"], summary))
    if not args.quiet:
        shown = ", ".join(f"{k}={v}" for k, v in res.params.items())
        print(f"{out}: best score {res.best_score:.6g} with {shown}")
    return 0


_EPILOG = ("The config is YAML; its fields are the keywords of the Python function of "
           "the same name, plus evaluate: module:function (your dev-set score, higher is "
           "better) and evaluate_kwargs. Unknown fields are refused. Examples: docs/cli.md.")

_OUT_DIR = ("out_dir", "output folder: model.safetensors, result.json")
_SAVE_STATE = ("FILE", "save the search state to FILE after every generation")

#: The commands: function, help, description, the config's help, the output
#: argument and its help, --checkpoint's metavar and help.
_COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, str, str, tuple[str, str],
                           tuple[str, str]]] = {
    "prune": (
        run_prune, "NPS-Pruning of one fine-tune's task vector, searched on your dev metric",
        "Search NPS subspace weights that maximise the config's evaluate hook "
        "(npsfuse.nps.prune) and save the best result (an NPS result file, "
        "for npsfuse compress or nps.transfer).",
        "base, finetuned, evaluate, density, ...",
        ("output", "the NPS result file to write (.nps.safetensors)"), _SAVE_STATE,
    ),
    "evolve": (
        run_evolve, "Evolver / CADE: differential evolution over whole weight sets",
        "Evolve a population of fine-tunes with the config's evaluate hook "
        "(npsfuse.Evolver) and write the best model (or, with merge:, the "
        "population's merge) to OUT_DIR.",
        "base, population, evaluate, merge, ...",
        _OUT_DIR, ("DIR", "save the whole run to DIR after every generation"),
    ),
    "search": (
        run_search, "search a merge method's parameters (lam, density, ...) on your dev metric",
        "Search merge hyper-parameters with DE or CMA-ES (npsfuse.search_merge) "
        "and write the best merge to OUT_DIR (the parameters in result.json).",
        "base, models, method, evaluate, params, ...", _OUT_DIR, _SAVE_STATE,
    ),
}


def add_commands(subparsers: Any) -> None:
    """Register ``prune``, ``evolve`` and ``search`` on an argparse subparsers object."""
    from .cli import add_command

    for name, (func, help_, description, fields, out, (metavar, saves)) in _COMMANDS.items():
        p = add_command(subparsers, name, func, help_, description,
                        ("config", f"YAML config: {fields}"), out, epilog=_EPILOG)
        p.add_argument("--checkpoint", metavar=metavar, default=None, help=saves)
        p.add_argument("--force", action="store_true",
                       help="replace an existing output (and start a checkpoint again)")
        p.add_argument("--quiet", action="store_true", help="no progress bar, no summary line")
        p.add_argument("--resume", action="store_true",
                       help="continue from --checkpoint when it exists")


def signature_fields(command: str) -> set[str]:
    """The keywords of the Python function behind ``command`` that a config may set
    (the tests check the schemas against them)."""
    from . import nps
    from .evolve import Evolver, search_merge

    fn = {"prune": nps.prune, "evolve": Evolver.__init__, "search": search_merge}[command]
    # progress is --quiet, checkpoint is --checkpoint; an executor (npsfuse.executors) is a
    # live object, not YAML.
    return {n for n in inspect.signature(fn).parameters
            if n not in ("self", "evaluate", "progress", "executor", "checkpoint")}
