"""Issue #18, an API without surprises: search results that feed back into
``merge``, resumable saved states given by path, plots that return figures,
progress bars that fit their environment."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import npsfuse
import pytest
import torch
from npsfuse import _display, nps
from npsfuse.evolve import Evolver

SHAPES = {"a.weight": (20, 12), "a.bias": (12,), "b.weight": (6, 12)}
StateDict = dict[str, torch.Tensor]


def _distance_to(target: StateDict) -> Callable[[StateDict], float]:
    def score(sd: StateDict) -> float:
        return -sum(float(((sd[k] - target[k]) ** 2).sum()) for k in target)

    return score


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- 6. search_merge(...).params are merge's keywords ------------------------------


@pytest.mark.parametrize(
    ("method", "kw", "keys"),
    [
        ("ties", {"params": {"lam": (0.5, 2.0), "density": (0.1, 0.9)}},
         {"lam", "density"}),
        ("ties", {"params": {"density": (0.1, 0.9)}, "per_model": False,
                  "merge_params": {"normalize": False, "lam": 1.3}},
         {"density", "normalize", "lam"}),
        ("task_arithmetic", {"params": {"weight": (0.0, 2.0)}, "per_model": False},
         {"weights"}),
        ("dare_linear", {"params": {"weights": (0.2, 1.5), "density": (0.3, 0.9)},
                         "merge_params": {"seed": 7}},
         {"weights", "density", "seed"}),
        ("consensus_ta", {"params": {"tall_lambda": (0.2, 0.8)}}, {"tall_lambda"}),
    ],
)
def test_search_params_feed_merge(family: Callable, method: str, kw: dict[str, Any],
                                  keys: set[str]) -> None:
    base, models = family(SHAPES, 3, seed=11)
    score = _distance_to(npsfuse.merge(base, models, "ties", density=0.4, lam=1.2))
    res = npsfuse.search_merge(base, models, method, score, generations=2, popsize=4,
                               seed=1, progress=False, **kw)
    assert set(res.params) == keys
    again = npsfuse.merge(base, models, method, **res.params)
    best = res.state_dict()
    assert all(torch.equal(again[k], best[k]) for k in best)
    assert score(again) == res.best_score
    for name in ("weights", "density", "tall_lambda"):
        v = res.params.get(name)
        if isinstance(v, list):
            assert len(v) == 3 and all(isinstance(x, float) for x in v)


# -- 13. Search.resume / Evolver.resume from a path ---------------------------------


@pytest.fixture(scope="module")
def search_models() -> tuple[StateDict, StateDict]:
    from conftest import make_family

    base, (ft,) = make_family(SHAPES, 1, seed=12)
    return base, ft


def test_search_resume_from_a_path(search_models: tuple, tmp_path: Path) -> None:
    base, ft = search_models
    score = _distance_to(ft)
    s = nps.Search(base, ft, density=0.2, generations=3, popsize=4, seed=3)
    s.tell([score(sd) for sd in s.ask()])
    saved = s.state()
    written = s.save(tmp_path / "state.json")
    assert json.loads(written.read_text()) == saved
    (tmp_path / "by_hand.json").write_text(json.dumps(saved))
    for given in (written, str(written), str(tmp_path / "by_hand.json"), saved,
                  json.dumps(saved), "  " + json.dumps(saved)):
        with nps.Search.resume(given, base, ft) as r:
            assert r.state() == saved, type(given)
    s.close()


def test_search_resume_refuses_what_is_not_a_state(search_models: tuple,
                                                  tmp_path: Path) -> None:
    base, ft = search_models
    (tmp_path / "text.txt").write_text("hello")
    (tmp_path / "other.json").write_text('{"format": "npsfuse.nps_result"}')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "binary.bin").write_bytes(b"\x00\xff\xfe\x80")
    for given in ("text.txt", "other.json", "list.json", "binary.bin", "."):
        path = str(tmp_path / given)
        with pytest.raises(ValueError, match=r"not a saved NPS search state") as err:
            nps.Search.resume(path, base, ft)
        assert path in str(err.value)
    with pytest.raises(ValueError, match="the state text is not a saved NPS search state"):
        nps.Search.resume("{not json", base, ft)
    with pytest.raises(FileNotFoundError):
        nps.Search.resume(tmp_path / "missing.json", base, ft)


def _evolver_family() -> tuple[StateDict, list[StateDict]]:
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(10, 8, generator=g), "b": torch.randn(8, generator=g)}
    models = [{k: v + 0.2 * torch.randn(v.shape, generator=g) for k, v in base.items()}
              for _ in range(4)]
    return base, models


def test_evolver_resume_paths(tmp_path: Path) -> None:
    base, models = _evolver_family()
    score = _distance_to({k: v + 0.1 for k, v in base.items()})
    ev = Evolver(base, models, score, generations=2)
    ev.run(checkpoint=tmp_path / "run", progress=False)
    for given in (tmp_path / "run", tmp_path / "run" / "state.json"):
        back = Evolver.resume(given, score)
        assert back.history == ev.history
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "state.json").write_text("nope")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "state.json").write_text("[]")
    for name in ("empty", "bad", "odd"):
        with pytest.raises(ValueError, match="is not a saved Evolver run") as err:
            Evolver.resume(tmp_path / name, score)
        assert name in str(err.value)
    with pytest.raises(FileNotFoundError, match="no saved Evolver run"):
        Evolver.resume(tmp_path / "missing", score)


# -- 16. plot() returns a Figure, the file is optional ------------------------------


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    from conftest import make_family

    base, models = make_family(SHAPES, 3, seed=13)
    score = _distance_to(models[0])
    nps_res = nps.prune(base, models[0], score, density=0.2, generations=2, popsize=4,
                        seed=0, progress=False)
    fused = nps.fuse(base, [nps_res, nps_res], score, generations=2, popsize=4,
                     progress=False)
    sm = npsfuse.search_merge(base, models, "ties", score, generations=1, popsize=4,
                              progress=False)
    eb, em = _evolver_family()
    ev = Evolver(eb, em, _distance_to(eb), generations=2)
    ev.run(progress=False)
    return {"nps": nps_res, "fusion": fused, "search_merge": sm, "evolver_result": ev.result(),
            "evolver": ev}


@pytest.mark.parametrize("kind", ["nps", "fusion", "search_merge", "evolver_result", "evolver"])
def test_plot_returns_a_figure(results: dict[str, Any], kind: str, tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    pyplot = sys.modules.get("matplotlib.pyplot")
    open_before = pyplot.get_fignums() if pyplot is not None else []
    fig = results[kind].plot()
    assert isinstance(fig, Figure) and fig.axes
    assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"  # how Jupyter shows it
    assert not list(tmp_path.iterdir())
    fig2 = results[kind].plot(tmp_path / "p.png")
    assert isinstance(fig2, Figure) and fig2 is not fig
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results[kind].plot(str(tmp_path / "q.png"))
    assert (tmp_path / "q.png").is_file()
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert (pyplot.get_fignums() if pyplot is not None else []) == open_before


@pytest.mark.parametrize(
    ("kind", "what"),
    [("nps", "NPSResult.plot"), ("fusion", "FusionResult.plot"),
     ("search_merge", "SearchMergeResult.plot"), ("evolver_result", "Evolver.plot")],
)
def test_plot_without_matplotlib_names_the_extra(results: dict[str, Any], kind: str, what: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=rf"{what} needs matplotlib.*npsfuse\[plot\]"):
        results[kind].plot()


# -- progress bars: plain tqdm unless a notebook can draw the widget -----------------


def _fake_kernel(monkeypatch: pytest.MonkeyPatch, widgets: bool) -> None:
    shell = types.SimpleNamespace(config={"IPKernelApp": {}})
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake)
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", types.ModuleType("ipykernel.zmqshell"))
    for k in [k for k in os.environ if k == "QT_API" or k.startswith("SPYDER")]:
        monkeypatch.delenv(k)
    real = importlib.util.find_spec

    def find_spec(name: str, *a: Any) -> Any:
        if name == "ipywidgets":
            return object() if widgets else None
        return real(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize(
    ("kernel", "widgets", "notebook"),
    [(False, False, False), (True, False, False), (True, True, True)],
)
def test_progress_bar_kind(monkeypatch: pytest.MonkeyPatch, kernel: bool, widgets: bool,
                           notebook: bool) -> None:
    if kernel:
        _fake_kernel(monkeypatch, widgets)
    else:
        monkeypatch.delitem(sys.modules, "IPython", raising=False)
        monkeypatch.delitem(sys.modules, "ipykernel.zmqshell", raising=False)
    assert _display._in_notebook_with_widgets() is notebook
    if not notebook:
        import tqdm as tqdm_mod

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            bar = _display.progress_bar(total=2, disable=True)
        assert type(bar) is tqdm_mod.tqdm
        bar.close()


def test_searches_use_the_plain_bar_in_a_kernel_without_widgets(
        family: Callable, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _fake_kernel(monkeypatch, widgets=False)
    for mod in ("tqdm.auto", "tqdm.autonotebook"):  # they decide at import
        monkeypatch.delitem(sys.modules, mod, raising=False)
    base, models = family(SHAPES, 2, seed=14)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # tqdm.auto warns "IProgress not found"
        npsfuse.search_merge(base, models, "ties", _distance_to(base), generations=1,
                             popsize=4, progress=True)
        nps.prune(base, models[0], _distance_to(models[0]), density=0.2, generations=1,
                  popsize=4, progress=True)
        base_e, models_e = _evolver_family()
        Evolver(base_e, models_e, _distance_to(base_e), generations=1).run(progress=True)
    assert [str(w.message) for w in caught] == []
    err = capsys.readouterr().err
    assert "search ties" in err and "evolve" in err


# -- 11. Ctrl-C stops an in-memory merge ---------------------------------------------

_CHILD = r"""
import sys, time, torch, npsfuse
g = torch.Generator().manual_seed(0)
shape = (6000, 2000)  # della works by rows: a chunk is a row or so
base = {"a.w": torch.randn(shape, generator=g), "b.w": torch.randn(shape, generator=g)}
models = [{k: v + 0.01 * torch.randn(shape, generator=g) for k, v in base.items()}
          for _ in range(6)]
small = ({"w": torch.ones(4)}, [{"w": torch.full((4,), 2.0)}])
npsfuse.merge(*small, "task_arithmetic")  # load the extension before timing
out = None
print("start", flush=True)
t = time.monotonic()
try:
    out = npsfuse.merge(base, models, "della", threads=1)
except KeyboardInterrupt:
    print(f"interrupted {time.monotonic() - t:.3f}", flush=True)
    again = npsfuse.merge(*small, "task_arithmetic")  # the next call is unaffected
    print("next", float(again["w"][0]), flush=True)
    sys.exit(3 if out is None else 4)
print(f"finished {time.monotonic() - t:.3f}", flush=True)
"""


def test_ctrl_c_stops_a_merge() -> None:
    import signal
    import subprocess
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "start", child.stderr.read()
        time.sleep(0.1)  # well inside the merge (0.56-0.68 s on one thread, Intel Xeon, 2026-12)
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        first = child.stdout.readline()  # the merge's end, not the interpreter's
        took = time.monotonic() - sent
        child.wait(timeout=60)  # not communicate(): it would skip what readline buffered
        rest, err = child.stdout.read(), child.stderr.read()
    finally:
        child.kill()
    lines = (first + rest).split()
    assert child.returncode == 3, (rest, err)
    assert lines[0] == "interrupted" and lines[2:] == ["next", "2.0"], rest
    assert took < 1.0, f"the merge stopped {took:.2f} s after Ctrl-C"


def test_merges_through_the_worker_match_and_raise(family: Callable,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from npsfuse import _jobs

    base, models = family({"w": (64, 32)}, 2, seed=15)
    direct = npsfuse.merge(base, models, "ties", density=0.5)
    monkeypatch.setattr(_jobs, "WORTH_A_WORKER", 0)  # every merge through the worker
    via = npsfuse.merge(base, models, "ties", density=0.5)
    assert torch.equal(via["w"], direct["w"])
    assert any(t.name == "npsfuse-jobs" for t in __import__("threading").enumerate())
    bad = {"w": models[1]["w"].clone()}
    bad["w"][3, 4] = float("nan")
    with pytest.raises(ValueError, match=r'tensor "w": model 1 has NaN'):
        npsfuse.merge(base, [models[0], bad], "ties")
