"""``npsfuse prune``, ``npsfuse evolve`` and ``npsfuse search``: YAML configs with an
evaluation hook.

Each command must give the result of the Python function it wraps, bit for
bit, for the same config; refuse bad configs naming the field (with "did you
mean" for typos); resume from a checkpoint exactly where an interrupted run
stopped; and leave no partial output behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import npsfuse
import pytest
import torch
import yaml
from conftest import make_family, save_family
from npsfuse import _cli_run, cli
from safetensors.torch import load_file

SHAPES = {"a.weight": (24, 16), "a.bias": (16,), "b.weight": (16, 12)}

#: The evaluation hook, written to ``hook.py`` beside each config: minus the
#: squared distance to a target model; ``stop_after`` raises KeyboardInterrupt
#: at that call (an interrupted run).
HOOK = '''
import torch
from safetensors.torch import load_file

CALLS = [0]

def evaluate(sd, target, stop_after=None):
    CALLS[0] += 1
    if stop_after is not None and CALLS[0] > stop_after:
        raise KeyboardInterrupt
    t = load_file(target)
    return -float(sum(((sd[k].double() - t[k].double()) ** 2).sum() for k in t))
'''


def _namespace() -> dict[str, Any]:
    ns: dict[str, Any] = {}
    exec(HOOK, ns)  # the same function the CLI imports from hook.py
    return ns


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Models on disk (base, 3 fine-tunes, a target), hook.py and a config writer."""
    # Each test imports its own hook.py (fresh call counter); sys.path is restored.
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "hook", raising=False)
    base, models = make_family(SHAPES, n_models=4, seed=3, delta=0.2)
    b, fts = save_family(tmp_path, base, models)
    target = str(fts[3] / "model.safetensors")
    (tmp_path / "hook.py").write_text(HOOK)

    def config(name: str, fields: dict[str, Any]) -> Path:
        p = tmp_path / name
        p.write_text(yaml.safe_dump(fields))
        return p

    return {"root": tmp_path, "base": str(b), "models": [str(f) for f in fts[:3]],
            "target": target, "config": config, "hook": {"evaluate": "hook:evaluate",
                                                          "evaluate_kwargs": {"target": target}}}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _evaluate(target: str, **kw: Any) -> Callable[[Any], float]:
    ev = _namespace()["evaluate"]
    return lambda sd: ev(sd, target, **kw)


# ----------------------------------------------------- CLI == notebook --

PRUNE = {"density": 0.3, "subspaces": 4, "generations": 3, "popsize": 4, "seed": 5}
EVOLVE = {"merge": None, "generations": 2, "seed": 7, "F": 0.5, "CR": 0.5}
SEARCH = {"params": {"lam": [0.5, 1.5]}, "generations": 2, "popsize": 4, "seed": 2}


def test_prune_equals_python(setup: dict[str, Any]) -> None:
    cfg = setup["config"]("prune.yaml", {"base": "base", "finetuned": "ft0", **setup["hook"],
                                         **PRUNE})
    out = setup["root"] / "r.nps.safetensors"
    assert cli.main(["prune", str(cfg), str(out), "--quiet"]) == 0
    want = npsfuse.nps.prune(setup["base"], setup["models"][0], _evaluate(setup["target"]),
                             progress=False, **PRUNE)
    got = npsfuse.nps.NPSResult.load(out)
    assert got.score == want.score and got.weights.tolist() == want.weights.tolist()
    _same(load_file(out), {k: t.contiguous() for k, t in want.task_vector().items()})
    assert not [p for p in setup["root"].iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("merge", [None, "ties"])
def test_evolve_equals_python(setup: dict[str, Any], merge: str | None) -> None:
    fields = {**EVOLVE, "merge": merge}
    if merge is not None:
        fields["merge_params"] = {"density": 0.5}
    cfg = setup["config"]("evolve.yaml", {"base": "base", "population": ["ft0", "ft1", "ft2"],
                                          **setup["hook"], **fields})
    out = setup["root"] / "evo"
    assert cli.main(["evolve", str(cfg), str(out), "--quiet"]) == 0
    res = npsfuse.Evolver(setup["base"], setup["models"], _evaluate(setup["target"]),
                          **fields).run(progress=False)
    _same(load_file(out / "model.safetensors"), res.state_dict())
    import json

    summary = json.loads((out / "result.json").read_text())
    assert summary["best_score"] == res.best_score
    assert summary["history"] == res.history


def test_search_equals_python(setup: dict[str, Any]) -> None:
    cfg = setup["config"]("search.yaml", {"base": "base", "models": ["ft0", "ft1", "ft2"],
                                          "method": "task_arithmetic", **setup["hook"],
                                          **SEARCH})
    out = setup["root"] / "best"
    assert cli.main(["search", str(cfg), str(out), "--quiet"]) == 0
    params = {k: tuple(v) for k, v in SEARCH["params"].items()}
    res = npsfuse.search_merge(setup["base"], setup["models"], "task_arithmetic",
                               _evaluate(setup["target"]), progress=False,
                               **{**SEARCH, "params": params})
    _same(load_file(out / "model.safetensors"), res.state_dict())
    import json

    assert json.loads((out / "result.json").read_text())["params"] == res.params


# ------------------------------------------------------ checkpoint/resume --

def test_prune_resumes_exactly(setup: dict[str, Any]) -> None:
    """Killed after the start point and one generation (4 + 1 calls), resumed: the
    result equals the uninterrupted run's."""
    fields = {"base": "base", "finetuned": "ft0", **PRUNE, "evaluate": "hook:evaluate"}
    stop = setup["config"]("stop.yaml", {**fields, "evaluate_kwargs": {
        "target": setup["target"], "stop_after": 6}})
    go = setup["config"]("go.yaml", {**fields, "evaluate_kwargs": {"target": setup["target"]}})
    out, ck = setup["root"] / "r.nps.safetensors", setup["root"] / "ck.json"
    assert cli.main(["prune", str(stop), str(out), "--quiet", "--checkpoint", str(ck)]) == 130
    assert ck.is_file() and not out.exists()
    # Without --resume an existing checkpoint is refused, not overwritten.
    assert cli.main(["prune", str(go), str(out), "--quiet", "--checkpoint", str(ck)]) == 2
    assert cli.main(["prune", str(go), str(out), "--quiet", "--checkpoint", str(ck),
                     "--resume"]) == 0
    want = npsfuse.nps.prune(setup["base"], setup["models"][0], _evaluate(setup["target"]),
                             progress=False, **PRUNE)
    got = npsfuse.nps.NPSResult.load(out)
    assert got.score == want.score and got.history == want.history
    # A checkpoint of another config is refused, naming the field.
    other = setup["config"]("other.yaml", {**fields, "density": 0.5,
                                           "evaluate_kwargs": {"target": setup["target"]}})
    assert cli.main(["prune", str(other), str(setup["root"] / "o.nps"), "--quiet",
                     "--checkpoint", str(ck), "--resume"]) == 2


def test_search_resumes_exactly(setup: dict[str, Any]) -> None:
    fields = {"base": "base", "models": ["ft0", "ft1"], "method": "task_arithmetic", **SEARCH,
              "evaluate": "hook:evaluate"}
    stop = setup["config"]("stop.yaml", {**fields, "evaluate_kwargs": {
        "target": setup["target"], "stop_after": 6}})
    go = setup["config"]("go.yaml", {**fields, "evaluate_kwargs": {"target": setup["target"]}})
    out, ck = setup["root"] / "s", setup["root"] / "s.json"
    assert cli.main(["search", str(stop), str(out), "--quiet", "--checkpoint", str(ck)]) == 130
    assert ck.is_file() and not out.exists()
    assert cli.main(["search", str(go), str(out), "--quiet", "--checkpoint", str(ck)]) == 2
    assert cli.main(["search", str(go), str(out), "--quiet", "--checkpoint", str(ck),
                     "--resume"]) == 0
    res = npsfuse.search_merge(setup["base"], setup["models"][:2], "task_arithmetic",
                               _evaluate(setup["target"]), progress=False, **SEARCH)
    _same(load_file(out / "model.safetensors"), res.state_dict())
    assert json.loads((out / "result.json").read_text())["history"] == res.history


def test_evolve_resumes_exactly(setup: dict[str, Any]) -> None:
    fields = {"base": "base", "population": ["ft0", "ft1", "ft2"], **EVOLVE,
              "generations": 3, "evaluate": "hook:evaluate"}
    stop = setup["config"]("stop.yaml", {**fields, "evaluate_kwargs": {
        "target": setup["target"], "stop_after": 7}})
    go = setup["config"]("go.yaml", {**fields, "evaluate_kwargs": {"target": setup["target"]}})
    out, ck = setup["root"] / "evo", setup["root"] / "ck"
    assert cli.main(["evolve", str(stop), str(out), "--quiet", "--checkpoint", str(ck)]) == 130
    assert ck.is_dir() and not out.exists()
    assert cli.main(["evolve", str(go), str(out), "--quiet", "--checkpoint", str(ck),
                     "--resume"]) == 0
    res = npsfuse.Evolver(setup["base"], setup["models"], _evaluate(setup["target"]),
                          **{k: v for k, v in fields.items() if k not in (
                              "base", "population", "evaluate")}).run(progress=False)
    _same(load_file(out / "model.safetensors"), res.state_dict())


# ------------------------------------------------------------ bad configs --

@pytest.mark.parametrize(("command", "fields", "words"), [
    ("prune", {"densty": 0.2}, ["unknown field 'densty'", "did you mean 'density'?"]),
    ("prune", {"Generations": 2}, ["did you mean 'generations'?"]),
    ("prune", {"density": "lots"}, ["density must be a number, got 'lots'"]),
    ("prune", {"bounds": [0, 1, 2]}, ["bounds must be a list of two numbers"]),
    ("prune", {"per_layer": "yes"}, ["per_layer must be true or false"]),
    ("evolve", {"popluation": ["ft0"]}, ["did you mean 'population'?",
                                         "missing required field 'population'"]),
    ("evolve", {"mrege": "ties"}, ["did you mean 'merge'?"]),
    ("evolve", {"generations": 1.5}, ["generations must be a whole number"]),
    ("search", {"parmas": {"lam": [0, 1]}}, ["did you mean 'params'?"]),
    ("search", {"params": {"lam": 1.0}}, ["params lam: must be a list of two numbers"]),
    ("search", {"evaluate": "hook"}, ["evaluate must be an entry point 'module:function'"]),
    ("search", {"evaluate": "hook:evaluat"}, ["no attribute 'evaluat'",
                                              "did you mean 'evaluate'?"]),
    ("search", {"evaluate": "no_such_module_x:f"}, ["cannot import module 'no_such_module_x'"]),
])
def test_bad_config_names_the_field(setup: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                    command: str, fields: dict[str, Any],
                                    words: list[str]) -> None:
    good = {"prune": {"base": "base", "finetuned": "ft0", **PRUNE},
            "evolve": {"base": "base", "population": ["ft0", "ft1"], **EVOLVE},
            "search": {"base": "base", "models": ["ft0", "ft1"], "method": "ties", **SEARCH}}
    doc = {**good[command], **setup["hook"]}
    for k in fields:  # a typo replaces the field it misspells
        for real in list(doc):
            if real.lower() == k.lower() or _cli_run._suggest(k, [real]):
                del doc[real]
    cfg = setup["config"]("bad.yaml", {**doc, **fields})
    out = setup["root"] / "out"
    assert cli.main([command, str(cfg), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err
    assert not out.exists()
    assert not [p for p in setup["root"].iterdir() if p.name.startswith(".")]


def test_method_errors_surface(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Values the schema accepts but the API refuses are reported, no traceback."""
    cfg = setup["config"]("bad.yaml", {"base": "base", "population": ["ft0", "ft1"],
                                       **setup["hook"], "strategy": "best/2/bin"})
    assert cli.main(["evolve", str(cfg), str(setup["root"] / "o"), "--quiet"]) == 2
    assert 'unknown strategy "best/2/bin"' in capsys.readouterr().err


@pytest.mark.parametrize("command", ["prune", "evolve", "search"])
def test_schema_matches_the_python_signature(command: str) -> None:
    """Every keyword of the wrapped function is a config field and vice versa (plus
    evaluate_kwargs), so the config cannot drift from the API."""
    fields = set(_cli_run._SCHEMAS[command]) - {"evaluate", "evaluate_kwargs"}
    assert fields == _cli_run.signature_fields(command) - {"population"} | (
        {"population"} if command == "evolve" else set())


def test_existing_output_refused(setup: dict[str, Any]) -> None:
    cfg = setup["config"]("s.yaml", {"base": "base", "models": ["ft0", "ft1"],
                                     "method": "task_arithmetic", **setup["hook"], **SEARCH})
    out = setup["root"] / "best"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(["search", str(cfg), str(out), "--quiet"]) == 2
    assert (out / "keep.txt").read_text() == "mine"
    assert cli.main(["search", str(cfg), str(out), "--quiet", "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["result.json", "model.safetensors"][::-1]


def test_interrupted_output_leaves_nothing(setup: dict[str, Any], monkeypatch:
                                           pytest.MonkeyPatch) -> None:
    """Ctrl-C while the output folder is written: no partial folder, no temp."""
    cfg = setup["config"]("s.yaml", {"base": "base", "models": ["ft0", "ft1"],
                                     "method": "task_arithmetic", **setup["hook"], **SEARCH})

    def boom(*a: Any, **k: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    out = setup["root"] / "best"
    assert cli.main(["search", str(cfg), str(out), "--quiet"]) == 130
    assert not out.exists()
    assert not [p for p in setup["root"].iterdir() if p.name.startswith(".")]


# -------------------------------------------------------------------- help --

@pytest.mark.parametrize("command", [[], ["merge"], ["compress"], ["decompress"], ["prune"],
                                     ["evolve"], ["search"]])
def test_help_has_no_raw_markup(command: list[str]) -> None:
    env = dict(os.environ)
    src = str(Path(npsfuse.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "100"
    r = subprocess.run([sys.executable, "-m", "npsfuse.cli", *command, "--help"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    for mark in ("``", ":func:", ":class:", ":meth:", "\\n"):
        assert mark not in r.stdout, (mark, r.stdout)
    for name in ("prune", "evolve", "search") if not command else []:
        assert name in r.stdout


def test_docs_examples_are_valid(tmp_path: Path) -> None:
    """Each example config of docs/cli.md passes the strict check of its command."""
    import re

    doc = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    if not doc.is_file():
        pytest.skip("docs/cli.md is not beside the tests (installed package)")
    blocks = re.findall(r"```yaml\n# (\w+)\.yaml\n(.*?)```", doc.read_text(), re.S)
    assert sorted(name for name, _ in blocks) == ["evolve", "prune", "search"]
    for name, text in blocks:
        p = tmp_path / f"{name}.yaml"
        p.write_text(text)
        cfg = _cli_run.load_config(p, name)
        assert cfg["evaluate"] == "my_eval:accuracy"
