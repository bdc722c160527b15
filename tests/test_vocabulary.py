"""One vocabulary across the API (#18 item 17) and PEFT inputs to the searches (#18 item 8).

Each decision of :mod:`npsfuse._vocab` has a test here: ``density`` (old
``keep``), ``bounds=(lo, hi)`` (old ``lo=``/``hi=``), one default number of
generations, ``merge_params`` (old ``fixed``), ``progress`` at call time, the
argument order base → what is applied → λ, ``resume`` from a path, one policy
for a failing ``evaluate``, ``plot()`` returning a Figure, the YAML configs in
the same words; old names work with a ``DeprecationWarning`` naming the new
one and the same result, old and new together are a ``TypeError``. Then
PEFT LoRA adapters (folders and ``PeftModel`` s) as the fine-tuned models of
``search_merge``, ``Evolver`` and ``nps.prune``/``nps.Search``.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import npsfuse
import numpy as np
import pytest
import torch
import yaml
from conftest import make_family
from npsfuse import cli, compress, nps
from npsfuse._vocab import GENERATIONS
from npsfuse.client import Client
from npsfuse.client._jobs import Session

StateDict = dict[str, torch.Tensor]
SHAPES = {"w": (12, 10), "v": (10, 8), "b": (8,)}


def _distance_to(target: StateDict) -> Callable[[StateDict], float]:
    def score(sd: StateDict) -> float:
        return -float(sum(((sd[k].float() - target[k].float()) ** 2).sum() for k in target))

    return score


@pytest.fixture(scope="module")
def fam() -> tuple[StateDict, list[StateDict]]:
    return make_family(SHAPES, n_models=3, seed=21)


def _same(a: StateDict, b: StateDict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------ density / keep --


def test_density_is_the_kept_fraction_and_keep_a_deprecated_alias(fam: Any) -> None:
    base, models = fam
    kw = dict(subspaces=3, generations=2, popsize=4, seed=1, progress=False)
    score = _distance_to(models[0])
    new = nps.prune(base, models[0], score, density=0.3, **kw)
    with pytest.warns(DeprecationWarning, match=r"keep= is deprecated, use density=") as rec:
        old = nps.prune(base, models[0], score, keep=0.3, **kw)
    assert rec[0].filename == __file__  # points at the caller
    assert np.array_equal(new.weights, old.weights) and new.score == old.score
    assert new.density == 0.3 and "density=0.3" in repr(new)
    with pytest.warns(DeprecationWarning, match=r"\.keep is deprecated, use \.density"):
        assert new.keep == new.density
    with pytest.raises(TypeError, match="both keep= .* and density="):
        nps.prune(base, models[0], score, keep=0.3, density=0.3, **kw)
    with pytest.raises(ValueError, match="density must lie in"):
        nps.prune(base, models[0], score, density=1.5, **kw)
    with (
        pytest.warns(DeprecationWarning, match="density="),
        nps.Search(base, models[0], keep=0.3, subspaces=3) as s,
    ):
        assert s.config["density"] == 0.3 and "keep" not in s.config
    with pytest.raises(TypeError, match="both"):
        nps.Search(base, models[0], keep=0.3, density=0.2)


def test_a_search_state_saved_with_keep_resumes(fam: Any, tmp_path: Path) -> None:
    """States written before the rename hold ``keep`` in their config."""
    base, models = fam
    with nps.Search(base, models[0], density=0.25, subspaces=3, seed=2) as s:
        state = s.state()
    state["config"]["keep"] = state["config"].pop("density")
    with nps.Search.resume(state, base, models[0]) as r:
        assert r.config["density"] == 0.25


class _Captured(Session):
    """What a Client method would submit (no daemon)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec


def _offline_client() -> Client:
    c = Client.__new__(Client)
    c._result_spec = lambda: {"kind": "test"}  # type: ignore[method-assign]
    c._submit_refs = lambda type, key, build: _Captured(  # type: ignore[method-assign]
        build(lambda m, what: what)
    )
    return c


def test_client_speaks_the_same_vocabulary() -> None:
    c = _offline_client()
    base, ft = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    new = c.nps_search(base, ft, density=0.2, bounds=(0.5, 1.5)).spec  # type: ignore[attr-defined]
    # the daemon's job spec keeps its own field names
    assert (new["keep"], new["lo"], new["hi"]) == (0.2, 0.5, 1.5)
    assert new["generations"] == GENERATIONS
    with pytest.warns(DeprecationWarning) as rec:
        old = c.nps_search(base, ft, keep=0.2, lo=0.5, hi=1.5).spec  # type: ignore[attr-defined]
    msgs = " ".join(str(w.message) for w in rec)
    assert "use density=" in msgs and "use bounds=(lo, hi)" in msgs
    assert old == new
    with pytest.raises(TypeError, match="bounds="):
        c.nps_search(base, ft, lo=0.5, bounds=(0.5, 1.5))
    with pytest.raises(TypeError, match="density="):
        c.submit_nps_prune(base, ft, keep=0.1, density=0.1)
    with pytest.warns(DeprecationWarning, match="density="):
        p = c.submit_compress(base, [ft], keep=0.07).spec  # type: ignore[attr-defined]
    assert p["keep"] == 0.07


# --------------------------------------------------------------- generations --


def test_one_default_number_of_generations_for_every_search() -> None:
    from npsfuse._executor import drive_session

    searches = {
        "nps.prune": nps.prune,
        "nps.Search": nps.Search,
        "nps.fuse": nps.fuse,
        "search_merge": npsfuse.search_merge,
        "Evolver": npsfuse.Evolver,
        "Client.nps_search": Client.nps_search,
        "Client.evolve": Client.evolve,
    }
    defaults = {
        name: inspect.signature(fn).parameters["generations"].default
        for name, fn in searches.items()
    }
    assert defaults == dict.fromkeys(searches, GENERATIONS) and GENERATIONS == 20
    # progress is an argument of every call that runs a search
    for fn in (nps.prune, nps.fuse, npsfuse.search_merge, npsfuse.Evolver.run, drive_session):
        assert "progress" in inspect.signature(fn).parameters, fn
    # the signatures show the new names only (the CLI builds its schemas from them)
    for fn, gone in (
        (nps.prune, "keep"),
        (nps.Search, "keep"),
        (npsfuse.search_merge, "fixed"),
        (Client.nps_search, "lo"),
    ):
        assert gone not in inspect.signature(fn).parameters


# ----------------------------------------------------------- merge_params --


def test_merge_params_names_the_fixed_merge_keywords(fam: Any) -> None:
    base, models = fam
    kw = dict(
        params={"density": (0.1, 0.9)},
        per_model=False,
        generations=2,
        popsize=4,
        seed=3,
        progress=False,
    )
    score = _distance_to(models[1])
    new = npsfuse.search_merge(base, models, "ties", score, merge_params={"lam": 1.3}, **kw)
    with pytest.warns(DeprecationWarning, match="fixed= is deprecated, use merge_params="):
        old = npsfuse.search_merge(base, models, "ties", score, fixed={"lam": 1.3}, **kw)
    assert new.params == old.params and new.params["lam"] == 1.3
    assert new.best_score == old.best_score
    with pytest.raises(TypeError, match="both fixed="):
        npsfuse.search_merge(base, models, "ties", score, fixed={}, merge_params={}, **kw)


# ------------------------------------------------------------------ progress --


def test_progress_is_given_to_run(fam: Any, capsys: pytest.CaptureFixture) -> None:
    base, models = fam
    score = _distance_to(models[0])
    quiet = npsfuse.Evolver(base, models, score, generations=1, seed=2).run(progress=False)
    assert "evolve" not in capsys.readouterr().err
    npsfuse.Evolver(base, models, score, generations=1, seed=2).run(progress=True)
    assert "evolve" in capsys.readouterr().err
    with pytest.warns(DeprecationWarning, match=r"use Evolver\.run\(progress=\.\.\.\)"):
        ev = npsfuse.Evolver(base, models, score, generations=1, seed=2, progress=False)
    assert _same(ev.run().state_dict(), quiet.state_dict())
    assert "evolve" not in capsys.readouterr().err


# ----------------------------------------------------------- argument order --


def test_base_first_then_what_is_applied(fam: Any, tmp_path: Path) -> None:
    base, models = fam
    res = nps.prune(
        base,
        models[0],
        _distance_to(models[0]),
        density=0.3,
        subspaces=3,
        generations=1,
        popsize=4,
        progress=False,
    )
    saved = res.save(tmp_path / "a.nps.safetensors")
    f = compress.save(tmp_path / "c.safetensors", base, {"a": res})
    want = nps.transfer(base, saved, 0.7)
    assert _same(compress.load(base, f, "a", 0.7), want)
    assert _same(compress.load(base, path=f, task="a", lam=0.7), want)
    with pytest.warns(DeprecationWarning, match=r"use \(base, path, task\)"):
        assert _same(compress.load(f, base, "a", 0.7), want)
    base_file = tmp_path / "base.safetensors"
    from safetensors.torch import save_file

    save_file(base, str(base_file))
    with pytest.warns(DeprecationWarning):  # two paths: told apart by the file's header
        assert _same(compress.load(f, base_file, "a", 0.7), want)
    assert _same(compress.load(base_file, f, "a", 0.7), want)
    tau = compress.load_task_vector(f, "a", base=base)
    assert _same(tau, res.task_vector())
    with pytest.warns(DeprecationWarning, match="use base="):
        assert _same(compress.load_task_vector(f, "a", base), tau)
    with pytest.raises(ValueError, match="another base"):
        compress.load_task_vector(f, "a", base=models[1])


# ----------------------------------------------------------- resume: a path --


def test_resume_takes_a_path_everywhere(fam: Any, tmp_path: Path) -> None:
    base, models = fam
    with nps.Search(base, models[0], density=0.3, subspaces=3) as s:
        s.save(tmp_path / "s.json")
        for where in (tmp_path / "s.json", str(tmp_path / "s.json")):
            with nps.Search.resume(where, base, models[0]) as r:
                assert r.state() == s.state()
    score = _distance_to(models[0])
    ev = npsfuse.Evolver(base, models, score, generations=1)
    ev.save(tmp_path / "ev")
    for where in (tmp_path / "ev", str(tmp_path / "ev"), tmp_path / "ev" / "state.json"):
        back = npsfuse.Evolver.resume(where, score)
        assert _same(back.run(progress=False).state_dict(), ev.run(progress=False).state_dict())
        ev = npsfuse.Evolver.resume(tmp_path / "ev", score)


# --------------------------------------------------- a failing evaluate --


class Boom(Exception):
    pass


def _searches(fam: Any) -> dict[str, Callable[[Callable[[StateDict], Any]], Any]]:
    base, models = fam
    taus = [{k: m[k] - base[k] for k in base} for m in models[:2]]
    return {
        "prune": lambda ev: nps.prune(
            base, models[0], ev, density=0.3, subspaces=3, generations=2, popsize=4, progress=False
        ),
        "fuse": lambda ev: nps.fuse(base, taus, ev, generations=2, popsize=4, progress=False),
        "search_merge": lambda ev: npsfuse.search_merge(
            base,
            models,
            "task_arithmetic",
            ev,
            params={"lam": (0.5, 1.5)},
            per_model=False,
            generations=2,
            popsize=4,
            progress=False,
        ),
        "Evolver": lambda ev: npsfuse.Evolver(base, models, ev, generations=2).run(progress=False),
        "Evolver with merger": lambda ev: npsfuse.Evolver(
            base, models, ev, generations=1, merge="task_arithmetic"
        ).run(progress=False),
    }


SEARCHES = ["prune", "fuse", "search_merge", "Evolver", "Evolver with merger"]


@pytest.mark.parametrize("name", SEARCHES)
def test_an_exception_in_evaluate_reaches_the_caller(fam: Any, name: str) -> None:
    calls = [0]
    score = _distance_to(fam[1][0])

    def flaky(sd: StateDict) -> float:
        calls[0] += 1
        if calls[0] == 3:
            raise Boom("dev set unreadable")
        return score(sd)

    with pytest.raises(Boom, match="dev set unreadable"):
        _searches(fam)[name](flaky)
    assert calls[0] == 3  # stopped at once


@pytest.mark.parametrize("name", SEARCHES)
def test_nan_marks_a_failed_candidate_with_one_warning(fam: Any, name: str) -> None:
    calls = [0]
    score = _distance_to(fam[1][0])

    def some_nan(sd: StateDict) -> float:
        calls[0] += 1
        return math.nan if calls[0] % 2 == 0 else score(sd)

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = _searches(fam)[name](some_nan)
    ours = [
        w
        for w in rec
        if issubclass(w.category, RuntimeWarning) and "the candidate failed" in str(w.message)
    ]
    assert len(ours) == 1 and "nan" in str(ours[0].message)
    assert ours[0].filename == __file__  # points at the caller's line
    best = getattr(res, "best_score", getattr(res, "score", None))
    assert best is not None and math.isfinite(best)


@pytest.mark.parametrize("name", SEARCHES)
def test_every_candidate_failing_is_an_error(fam: Any, name: str) -> None:
    with (
        pytest.warns(RuntimeWarning, match="candidate failed"),
        pytest.raises(RuntimeError, match="failed"),
    ):
        _searches(fam)[name](lambda sd: math.inf)


@pytest.mark.parametrize("name", SEARCHES)
def test_evaluate_must_return_a_number(fam: Any, name: str) -> None:
    with pytest.raises(TypeError, match="evaluate returned None .* must return a number"):
        _searches(fam)[name](lambda sd: None)


def test_tell_takes_none_as_a_failure(fam: Any) -> None:
    base, models = fam
    ev = npsfuse.Evolver(base, models, _distance_to(models[0]), generations=1)
    ev.ask()
    with pytest.warns(RuntimeWarning, match="a score was None"):
        assert ev.tell(None) is False
    with pytest.raises(TypeError, match="must return a number"):
        ev.ask()
        ev.tell("high")  # type: ignore[arg-type]


# ------------------------------------------------------------- plot: a Figure --


def test_every_plot_returns_a_figure(fam: Any, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    base, models = fam
    score = _distance_to(models[0])
    s = _searches(fam)
    ev = npsfuse.Evolver(base, models, score, generations=1)
    ev.run(progress=False)
    figures = {
        "NPSResult": s["prune"](score),
        "FusionResult": s["fuse"](score),
        "SearchMergeResult": s["search_merge"](score),
        "EvolverResult": ev.result(),
        "Evolver": ev,
    }
    for name, obj in figures.items():
        fig = obj.plot()
        assert isinstance(fig, Figure), name
        png = tmp_path / f"{name}.png"
        assert isinstance(obj.plot(png), Figure) and png.stat().st_size > 0, name


# ------------------------------------------------------------- the YAML configs --


def _config(tmp_path: Path, name: str, fields: dict[str, Any]) -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(fields))
    return p


def test_yaml_configs_use_the_same_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from npsfuse._cli_run import load_config, signature_fields

    common = {"base": "b", "finetuned": "f", "evaluate": "m:f"}
    new = load_config(_config(tmp_path, "new.yaml", {**common, "density": 0.2}), "prune")
    assert "deprecated" not in capsys.readouterr().err
    old = load_config(_config(tmp_path, "old.yaml", {**common, "keep": 0.2}), "prune")
    assert "field 'keep' is deprecated, use 'density'" in capsys.readouterr().err
    assert {k: v for k, v in old.items() if k != "_root"} == {
        k: v for k, v in new.items() if k != "_root"
    }
    with pytest.raises(ValueError, match="both 'keep' .* and 'density'"):
        load_config(
            _config(tmp_path, "both.yaml", {**common, "keep": 0.2, "density": 0.2}), "prune"
        )
    with pytest.raises(ValueError, match="did you mean 'density'"):
        load_config(_config(tmp_path, "typo.yaml", {**common, "keeep": 0.2}), "prune")
    search = {"base": "b", "models": ["m"], "method": "ties", "evaluate": "m:f"}
    got = load_config(_config(tmp_path, "s.yaml", {**search, "fixed": {"seed": 1}}), "search")
    assert got["merge_params"] == {"seed": 1} and "fixed" not in got
    assert "use 'merge_params'" in capsys.readouterr().err
    assert {"density", "bounds"} <= signature_fields("prune")
    assert "merge_params" in signature_fields("search")


def test_decompress_takes_the_base_first(
    fam: Any, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from safetensors.torch import load_file, save_file

    base, models = fam
    res = nps.prune(
        base,
        models[0],
        _distance_to(models[0]),
        density=0.3,
        subspaces=3,
        generations=1,
        popsize=4,
        progress=False,
    )
    f = compress.save(tmp_path / "c.safetensors", base, {"a": res})
    base_file = tmp_path / "base.safetensors"
    save_file(base, str(base_file))
    want = res.state_dict(0.5)
    assert (
        cli.main(
            [
                "decompress",
                str(base_file),
                str(f),
                "a",
                str(tmp_path / "new"),
                "--lam",
                "0.5",
                "--quiet",
            ]
        )
        == 0
    )
    assert "deprecated" not in capsys.readouterr().err
    assert (
        cli.main(
            [
                "decompress",
                str(f),
                str(base_file),
                "a",
                str(tmp_path / "old"),
                "--lam",
                "0.5",
                "--quiet",
            ]
        )
        == 0
    )
    assert "order FILE BASE is deprecated" in capsys.readouterr().err
    for d in ("new", "old"):
        assert _same(load_file(str(tmp_path / d / "model.safetensors")), want)


# ------------------------------------------------------- PEFT inputs (item 8) --


def _lora(seed: int, tmp_path: Path) -> tuple[StateDict, Any, Path, StateDict]:
    """A tiny Llama's base weights, a PeftModel with random LoRA factors on
    it, its saved adapter folder and PEFT's own merge_and_unload weights."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    warnings.filterwarnings("ignore", module="peft")
    cfg = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg).float()
    base = {k: v.detach().clone() for k, v in m.state_dict().items()}
    torch.manual_seed(seed)
    pm = peft.get_peft_model(
        m,
        peft.LoraConfig(
            r=2, lora_alpha=4, init_lora_weights=False, target_modules=["q_proj", "v_proj"]
        ),
    )
    folder = tmp_path / f"adapter-{seed}"
    pm.save_pretrained(folder)
    merged = {
        k: v.detach().clone() for k, v in copy.deepcopy(pm).merge_and_unload().state_dict().items()
    }
    assert any(not torch.equal(merged[k], base[k]) for k in base)  # the test can fail
    return base, pm, folder, merged


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, ...]]:
    root = tmp_path_factory.mktemp("loras")
    return [_lora(seed, root) for seed in (1, 2, 3)]


def test_search_merge_takes_adapters(loras: list[tuple[Any, ...]]) -> None:
    base = loras[0][0]
    merged = [x[3] for x in loras]
    kw = dict(
        params={"lam": (0.5, 1.5)},
        per_model=False,
        generations=2,
        popsize=4,
        seed=5,
        progress=False,
    )
    score = _distance_to(merged[0])
    want = npsfuse.search_merge(base, merged, "task_arithmetic", score, **kw)
    got = npsfuse.search_merge(
        base, [loras[0][2], loras[1][1], merged[2]], "task_arithmetic", score, **kw
    )
    assert got.params == want.params and got.best_score == want.best_score
    assert _same(got.state_dict(), want.state_dict())


def test_evolver_population_takes_adapters(loras: list[tuple[Any, ...]]) -> None:
    base = loras[0][0]
    merged = [x[3] for x in loras]
    score = _distance_to({k: (merged[0][k] + merged[1][k]) / 2 for k in base})
    want = npsfuse.Evolver(base, merged, score, generations=2, seed=4).run(progress=False)
    got = npsfuse.Evolver(
        base, [loras[0][2], loras[1][1], loras[2][2]], score, generations=2, seed=4
    ).run(progress=False)
    assert got.history == want.history and got.best_index == want.best_index
    assert _same(got.state_dict(), want.state_dict())


def test_nps_takes_adapters(loras: list[tuple[Any, ...]]) -> None:
    base, pm, folder, merged = loras[0]
    kw = dict(density=0.2, subspaces=3, generations=2, popsize=4, seed=6, progress=False)
    score = _distance_to(merged)
    want = nps.prune(base, merged, score, **kw)
    for ft in (folder, pm):
        got = nps.prune(base, ft, score, **kw)
        assert np.array_equal(got.weights, want.weights) and got.score == want.score
        assert _same(got.task_vector(), want.task_vector())
        with (
            nps.Search(base, ft, density=0.2, subspaces=3, seed=6) as s,
            nps.Search(base, merged, density=0.2, subspaces=3, seed=6) as r,
        ):
            assert s.fingerprints == r.fingerprints
            assert _same(s.ask()[0], r.ask()[0])
    with pytest.raises(ValueError, match="PEFT LoRA adapter folder"):
        nps.prune(folder, merged, score, **kw)  # an adapter is not a base
