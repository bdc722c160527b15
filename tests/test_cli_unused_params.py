"""Issue 18 item 7: a parameter the method does not use is refused, and a typo gets
"did you mean", in every door: ``npsfuse.merge``, the YAML config
(``merge_checkpoints`` and ``npsfuse merge``), the daemon's merge job and
``MergeOnSave``'s configuration.

``weight``, ``density`` and ``lambda`` are refused where the method does not
read them; the run options ``normalize``, ``scope`` and ``seed`` stay accepted
everywhere (callers set them uniformly across methods). ``npsfuse.merge``
does not send its own defaults (``density=0.2``, ``lam=1``) to methods that do
not read them, so only a value the caller chose is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import npsfuse
import pytest
import yaml
from conftest import make_family, save_family
from npsfuse import cli
from test_daemon import daemon, make_daemon, npsfused_bin  # noqa: F401  (the daemon fixtures)

SHAPES = {"a.weight": (12, 8), "a.bias": (8,)}

#: (method, npsfuse.merge keywords, YAML parts, words in every door's message).
CASES = [
    ("task_arithmetic", {"density": 5}, {"parameters": {"density": 5}},
     "density is not used by task_arithmetic (its parameters: weight, lambda, normalize, rescale)"),
    ("slerp", {"weights": [1.0, 2.0], "t": 0.5},
     {"parameters": {"t": 0.5}, "model_parameters": [{"weight": 1.0}, {"weight": 2.0}]},
     "is not used by slerp (its parameters: t)"),
    ("model_stock", {"lam": 2.0}, {"parameters": {"lambda": 2.0}},
     "is not used by model_stock"),
    ("ties", {"densty": 0.5}, {"parameters": {"densty": 0.5}},
     "densty is not a parameter of ties (its own parameters: rescale) (did you mean density?)"),
    ("task_arithmetic", {"lamda": 0.5}, {"parameters": {"lamda": 0.5}},
     "(did you mean lambda? In Python: lam=)"),
]
IDS = [f"{c[0]}-{next(iter(c[1]))}" for c in CASES]


def _config(method: str, parts: dict[str, Any], base: str, models: list[str]) -> dict[str, Any]:
    per = parts.get("model_parameters") or [{} for _ in models]
    cfg: dict[str, Any] = {"merge_method": method, "base_model": base,
                           "models": [{"model": m, "parameters": p} if p else {"model": m}
                                      for m, p in zip(models, per, strict=True)]}
    if "parameters" in parts:
        cfg["parameters"] = parts["parameters"]
    return cfg


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_python_yaml_and_cli_refuse(case: tuple, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    method, kw, parts, words = case
    base, models = make_family(SHAPES, 2, seed=5, delta=0.1)
    with pytest.raises(ValueError) as py:
        npsfuse.merge(base, models, method, **kw)
    # Python names its own keywords (lam=, weights=), with the engine's words.
    key = next(iter(kw))
    assert f"{key} is not" in str(py.value) or f"{key} of model 0 is not" in str(py.value)
    assert f"by {method}" in str(py.value) or f"of {method}" in str(py.value), py.value
    b, fts = save_family(tmp_path, base, models)
    cfg = _config(method, parts, str(b), [str(f) for f in fts])
    with pytest.raises(ValueError) as yml:
        npsfuse.merge_checkpoints(cfg, tmp_path / "out", quiet=True)
    assert words in str(yml.value), yml.value
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["merge", str(path), str(tmp_path / "out2"), "--quiet"]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


@pytest.mark.parametrize("case", CASES[:3], ids=IDS[:3])
def test_daemon_job_refuses(case: tuple, daemon) -> None:  # noqa: F811
    method, _, parts, words = case
    base, models = make_family(SHAPES, 2, seed=5, delta=0.1)
    job = _config(method, parts, base, models)  # the client uploads the state dicts
    with pytest.raises(ValueError) as exc:
        daemon.client().submit_merge(job).result(timeout=60)
    assert words in str(exc.value), exc.value


def test_merge_on_save_config_refused(tmp_path: Path) -> None:
    """MergeOnSave's configuration goes through the YAML door (daemon or local)."""
    pytest.importorskip("transformers")
    from npsfuse.callbacks import MergeOnSave

    base, models = make_family(SHAPES, 2, seed=5, delta=0.1)
    b, fts = save_family(tmp_path, base, models)
    cb = MergeOnSave(b, method="task_arithmetic", models=[fts[1]], parameters={"density": 0.3})
    with pytest.raises(ValueError, match="density is not used by task_arithmetic"):
        npsfuse.merge_checkpoints(cb.config_for(str(fts[0])), tmp_path / "m", quiet=True)


@pytest.mark.parametrize(("method", "kw"), [
    ("task_arithmetic", {}),                          # merge's own defaults are not sent
    ("model_stock", {}),
    ("task_arithmetic", {"density": 0.2, "lam": 1.5}),  # density at its default: not sent
    ("ties", {"seed": 3, "scope": "global"}),         # run options stay accepted
    ("linear", {"scope": "tensor", "normalize": True}),
])
def test_defaults_and_run_options_accepted(method: str, kw: dict[str, Any]) -> None:
    base, models = make_family(SHAPES, 2, seed=5, delta=0.1)
    out = npsfuse.merge(base, models, method, **kw)
    assert set(out) == set(base)
