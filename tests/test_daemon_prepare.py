"""The daemon's merge job prepares configs as ``npsfuse merge`` does (issue
#14 item 8): Hugging Face Hub ids (a local fake cache), ``MODEL+LORA`` with a
PEFT adapter, and ``tokenizer_source: union`` go through the one
implementation, :mod:`npsfuse._prepare`, which the daemon runs with its
``python`` setting. The notebook door and the daemon must write the same
checkpoint, bit for bit. Also: refusal without the setting (and no Python
started for configs that need none), confinement before Python (a local
input or the Hub cache outside the data roots) and after it (a prepared path
outside them), and the job's scratch folder gone after success and failure.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import npsfuse
import pytest
from npsfuse.client import JobFailedError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
safetensors_torch = pytest.importorskip("safetensors.torch")

from test_daemon import Daemon, npsfused_bin  # noqa: E402, F401  (the daemon fixture)
from test_mergekit_tokenizer import _cases, _make_family  # noqa: E402
from test_peft_inputs import _fake_hub_repo, _llama, _peft_model  # noqa: E402

#: Files of a merged checkpoint whose bytes may differ between the doors:
#: README.md lists the config, which names the inputs' paths.
NAMES_PATHS = ("README.md",)


def _python_wrapper(folder: Path) -> tuple[str, Path]:
    """An executable that records each start in a marker file, then runs
    this interpreter: the daemon's ``python`` setting in these tests."""
    marker = folder / "python-started"
    script = folder / "python"
    script.write_text(f'#!/bin/sh\necho x >> {marker}\nexec {sys.executable} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), marker


@pytest.fixture
def daemon_at(npsfused_bin: str, monkeypatch: pytest.MonkeyPatch) -> Any:  # noqa: F811
    """Start a daemon (``python=True``: with the wrapper as its python;
    ``cache``: the Hugging Face cache, default ``ROOT/hf/hub``), with the
    fake cache in the environment of both doors (offline)."""
    made: list[Daemon] = []

    def start(python: bool = True, cache: Path | None = None, offline: bool = True) -> Daemon:
        d = Daemon(npsfused_bin)
        made.append(d)
        d.python, d.marker = _python_wrapper(d.dir)
        if python:
            d.args += ["--python", d.python]
        d.cache = cache or d.root / "hf" / "hub"
        d.cache.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv("HF_HUB_CACHE", str(d.cache))
        monkeypatch.delenv("HF_HOME", raising=False)
        # transformers records HF_HUB_OFFLINE as read when it was imported
        # (in a saved tokenizer_config.json): this process imported it
        # online, so the tokenizer test runs the daemon's Python online too.
        if offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        else:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        return d.start()

    yield start
    for d in made:
        d.cleanup()


def _scratch(d: Daemon) -> list[str]:
    """The job scratch folders left in the daemon's state folder."""
    s = d.dir / "state" / "scratch"
    assert s.is_dir(), "the daemon made no scratch folder: this check could not fail"
    return sorted(os.listdir(s))


def _same_files(a: Path, b: Path) -> None:
    """The two checkpoints hold the same files, byte for byte (README.md
    aside: it names the inputs' paths)."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert "model.safetensors" in names
    for n in names:
        if n not in NAMES_PATHS:
            assert (a / n).read_bytes() == (b / n).read_bytes(), n


def _hub_family(root: Path) -> dict[str, Any]:
    """A tiny Llama base and fine-tune in the fake cache (org/base,
    org/ft@v1) and a PEFT LoRA adapter, both in the cache (org/lora) and as
    a folder beside the base's copy (src/)."""
    src = root / "src"
    _, _, adapter = _peft_model("plain", src)
    m = _llama()
    m.save_pretrained(src / "base")
    m.load_state_dict({k: v + 0.01 for k, v in m.state_dict().items()})
    m.save_pretrained(src / "ft")
    return {"src": src, "adapter": adapter}


def test_hub_ids_and_model_plus_lora_as_the_notebook(daemon_at: Any, tmp_path: Path) -> None:
    d = daemon_at()
    fam = _hub_family(d.root)
    _fake_hub_repo(d.cache, "org/base", fam["src"] / "base", "a" * 40, ("main",))
    _fake_hub_repo(d.cache, "org/ft", fam["src"] / "ft", "b" * 40, ("main", "v1"))
    _fake_hub_repo(d.cache, "org/lora", fam["adapter"], "c" * 40, ("main",))
    conf = {
        "merge_method": "task_arithmetic",
        "base_model": "org/base",
        "models": [
            {"model": "org/ft@v1", "parameters": {"weight": 0.5}},
            {"model": "org/base+org/lora", "parameters": {"weight": 0.3}},
            {"model": f"{fam['src'] / 'base'}+{fam['adapter']}", "parameters": {"weight": 0.2}},
        ],
    }
    want = npsfuse.merge_checkpoints(conf, tmp_path / "notebook", quiet=True)
    c = d.client()
    got = c.submit_merge(conf, out_dir=d.root / "daemon").result(timeout=300)
    _same_files(want, got)
    base = safetensors_torch.load_file(fam["src"] / "base" / "model.safetensors")
    out = safetensors_torch.load_file(got / "model.safetensors")
    assert any(not torch.equal(out[k], base[k]) for k in base), "the merge changed nothing"
    assert _scratch(d) == []
    assert not [p for p in d.root.iterdir() if p.name.startswith(".npsfuse")]
    # The same as a tensor result (no out_dir): the scratch goes too.
    tensors = c.submit_merge(conf).result(timeout=300)
    assert all(torch.equal(tensors[k], out[k]) for k in out)
    assert _scratch(d) == []


def test_tokenizer_union_as_the_notebook(daemon_at: Any, tmp_path: Path) -> None:
    d = daemon_at(offline=False)
    fam = _make_family(d.root / "tok", tied=False)
    conf = {
        "merge_method": "linear",
        "base_model": fam["base"],
        "models": [
            {"model": fam["base"], "parameters": {"weight": 0.4}},
            {"model": fam["ft0"], "parameters": {"weight": 0.3}},
            {"model": fam["ft1"], "parameters": {"weight": 0.3}},
        ],
        "tokenizer_source": "union",
        "dtype": "float32",
    }
    want = npsfuse.merge_checkpoints(conf, tmp_path / "notebook", quiet=True)
    got = d.client().submit_merge(conf, out_dir=d.root / "daemon").result(timeout=300)
    _same_files(want, got)
    emb = safetensors_torch.load_file(got / "model.safetensors")["model.embed_tokens.weight"]
    assert emb.shape[0] == 40 + 4  # the base's 40 words, then <x>, <a>, <b>, <c>
    assert _scratch(d) == []
    # A merged tokenizer is written with a checkpoint: no tensor result.
    with pytest.raises(ValueError, match="give out_dir"):
        d.client().submit_merge(conf)


def test_tokenizer_rules_and_templates_as_the_notebook(daemon_at: Any, tmp_path: Path) -> None:
    """The tokenizer: block (tokens rules, padding), a chat template by name,
    tokenizer_source: base and a model as the source, with tied embeddings:
    the daemon's checkpoint is the notebook's."""
    d = daemon_at(offline=False)
    cases = _cases(_make_family(d.root / "tok", tied=True))
    names = ["tokens rules and padding", "chat template by name", "base", "model as source"]
    for i, name in enumerate(names):
        want = npsfuse.merge_checkpoints(cases[name], tmp_path / f"notebook{i}", quiet=True)
        got = d.client().submit_merge(cases[name], out_dir=d.root / f"daemon{i}")
        _same_files(want, got.result(timeout=300))
    assert d.marker.read_text().count("x") == len(names)
    assert _scratch(d) == []


def test_refused_without_python_and_python_only_when_needed(daemon_at: Any, tmp_path: Path) -> None:
    d = daemon_at(python=False)
    fam = _hub_family(d.root)
    plain = {
        "merge_method": "task_arithmetic",
        "base_model": str(fam["src"] / "base"),
        "models": [{"model": str(fam["src"] / "ft")}],
    }
    d.client().submit_merge(plain, out_dir=d.root / "plain").result(timeout=120)
    for model in ("org/ft", f"{fam['src'] / 'base'}+{fam['adapter']}"):
        conf = dict(plain, models=[{"model": model}])
        with pytest.raises(ValueError, match=r"python .*NPSFUSE_PYTHON"):
            d.client().submit_merge(conf, out_dir=d.root / "x")
    with pytest.raises(
        ValueError, match=r"tokenizer_source needs the merged tokenizer.*NPSFUSE_PYTHON"
    ):
        d.client().submit_merge(dict(plain, tokenizer_source="union"), out_dir=d.root / "x")
    # With python set, a config that needs no preparation never starts it.
    d2 = daemon_at()
    fam2 = _hub_family(d2.root)
    plain2 = dict(
        plain, base_model=str(fam2["src"] / "base"), models=[{"model": str(fam2["src"] / "ft")}]
    )
    d2.client().submit_merge(plain2, out_dir=d2.root / "plain").result(timeout=120)
    assert not d2.marker.exists(), "Python started for a config that needs no preparation"
    lora = dict(plain2, models=[{"model": f"{fam2['src'] / 'base'}+{fam2['adapter']}"}])
    d2.client().submit_merge(lora, out_dir=d2.root / "lora").result(timeout=300)
    assert d2.marker.read_text().count("x") == 1


def test_confinement_before_and_after_python(daemon_at: Any, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    fam_out = _hub_family(outside)
    # The Hub cache outside the data roots: refused at submit, naming it.
    d = daemon_at(cache=outside / "hub")
    fam = _hub_family(d.root)
    conf = {
        "merge_method": "task_arithmetic",
        "base_model": str(fam["src"] / "base"),
        "models": [{"model": "org/ft"}],
    }
    with pytest.raises(PermissionError, match=r"Hugging Face cache .*hub.*data_roots"):
        d.client().submit_merge(conf, out_dir=d.root / "x")
    # A local input (either side of MODEL+LORA) outside the roots, and an
    # input folder whose file links out of them: refused before Python.
    for model in (
        f"{fam['src'] / 'base'}+{fam_out['adapter']}",
        f"{fam_out['src'] / 'base'}+{fam['adapter']}",
    ):
        with pytest.raises(PermissionError, match="outside the data roots"):
            d.client().submit_merge(dict(conf, models=[{"model": model}]), out_dir=d.root / "x")
    linked = d.root / "linked"
    linked.mkdir()
    for f in fam["adapter"].iterdir():
        (linked / f.name).write_bytes(f.read_bytes())
    os.remove(linked / "adapter_config.json")
    os.symlink(fam_out["adapter"] / "adapter_config.json", linked / "adapter_config.json")
    with pytest.raises(PermissionError, match="is a link to"):
        d.client().submit_merge(
            dict(conf, models=[{"model": f"{fam['src'] / 'base'}+{linked}"}]), out_dir=d.root / "x"
        )
    assert not d.marker.exists(), "Python started for a refused config"
    # After Python: a cached snapshot whose files link out of the roots
    # (blobs elsewhere) is prepared, then refused before Go reads it.
    d2 = daemon_at()
    fam2 = _hub_family(d2.root)
    snap = d2.cache / "models--org--ft" / "snapshots" / ("b" * 40)
    snap.mkdir(parents=True)
    for f in (fam_out["src"] / "ft").iterdir():
        os.symlink(f, snap / f.name)
    (d2.cache / "models--org--ft" / "refs").mkdir()
    (d2.cache / "models--org--ft" / "refs" / "main").write_text("b" * 40)
    job = d2.client().submit_merge(
        dict(conf, base_model=str(fam2["src"] / "base")), out_dir=d2.root / "y"
    )
    with pytest.raises(JobFailedError, match="is a link to .* outside the data roots"):
        job.result(timeout=300)
    assert d2.marker.exists()
    assert _scratch(d2) == []
    assert not (d2.root / "y").exists()


def test_scratch_removed_after_a_failure(daemon_at: Any) -> None:
    """Python prepares (a LoRA merged into the scratch folder), then the Go
    engine refuses the config: the scratch folder goes all the same; an
    error of Python's keeps its kind."""
    d = daemon_at()
    fam = _hub_family(d.root)
    conf = {
        "merge_method": "no_such_method",
        "base_model": str(fam["src"] / "base"),
        "models": [{"model": f"{fam['src'] / 'base'}+{fam['adapter']}"}],
    }
    job = d.client().submit_merge(conf, out_dir=d.root / "x")
    with pytest.raises(JobFailedError, match="no_such_method"):
        job.result(timeout=300)
    assert d.marker.exists()
    assert _scratch(d) == []
    # The LoRA is no adapter: Python's message (its kind in the daemon's log).
    bad = dict(
        conf,
        merge_method="task_arithmetic",
        models=[{"model": f"{fam['src'] / 'base'}+{fam['src'] / 'ft'}"}],
    )
    with pytest.raises(JobFailedError, match="adapter_config.json"):
        d.client().submit_merge(bad, out_dir=d.root / "x").result(timeout=300)
    # A Hub id that is not cached.
    with pytest.raises(JobFailedError, match="org/missing.*HF_HUB_OFFLINE"):
        d.client().submit_merge(
            dict(bad, models=[{"model": "org/missing"}]), out_dir=d.root / "x"
        ).result(timeout=300)
    assert _scratch(d) == []


def test_kill9_while_python_prepares(daemon_at: Any, tmp_path: Path) -> None:
    """kill -9 of the daemon while Python prepares: Python dies with it, the
    next start removes the job's scratch folder, and the retried job
    prepares anew and writes the notebook's checkpoint."""
    d = daemon_at()
    fam = _hub_family(d.root)
    conf = {
        "merge_method": "task_arithmetic",
        "base_model": str(fam["src"] / "base"),
        "models": [{"model": f"{fam['src'] / 'base'}+{fam['adapter']}"}],
    }
    # The first start of python hangs (a sleep in its place, its pid noted).
    hang, pid = d.dir / "hang", d.dir / "pid"
    hang.touch()
    script = Path(d.python)
    script.write_text(
        f"#!/bin/sh\necho x >> {d.marker}\nif [ -e {hang} ]; then rm {hang}; echo $$ > {pid}; "
        f'exec sleep 120; fi\nexec {sys.executable} "$@"\n'
    )
    job = d.client().submit_merge(conf, out_dir=d.root / "out")
    deadline = time.monotonic() + 60
    while not (pid.exists() and pid.read_text().strip() and _scratch(d)):
        assert time.monotonic() < deadline, job.status()
        time.sleep(0.02)
    d.kill9()
    hung = int(pid.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{hung}").exists() and "zombie" not in _proc_state(hung):
        assert time.monotonic() < deadline, "python outlived the daemon"
        time.sleep(0.02)
    assert _scratch(d) == [f"job-{job.id}"]  # left by the crash
    d.start()
    got = d.client().job(job.id).result(timeout=300)
    want = npsfuse.merge_checkpoints(conf, tmp_path / "notebook", quiet=True)
    _same_files(want, got)
    assert d.marker.read_text().count("x") == 2
    assert _scratch(d) == []


def _proc_state(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.lower()
    except OSError:
        pass
    return "gone"


@pytest.mark.parametrize(
    "stdin, code, kind, words",
    [
        ("{", 1, "invalid_input", "not JSON"),
        ("[1]", 1, "invalid_input", "must be a mapping"),
        ('{"merge_method": "linear", "models": [{"model": "org/missing"}]}', 1, "not_found",
         "org/missing"),
        ('{"merge_method": "linear", "models": [{"model": "a+b+c"}]}', 1, "invalid_input",
         "MODEL+LORA"),
        ('{"merge_method": "linear", "models": [{"model": "/m"}]}', 0, None, None),
    ],
)  # fmt: skip
def test_prepare_command_answers_one_json_line(
    stdin: str, code: int, kind: str | None, words: str | None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``python -m npsfuse._prepare SCRATCH``: one JSON line on stdout, the
    prepared config or the error with its kind (what the daemon reads)."""
    import json
    import subprocess

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = subprocess.run(
        [sys.executable, "-m", "npsfuse._prepare", str(tmp_path / "scratch")],
        input=stdin, capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == code, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout
    answer = json.loads(lines[0])
    if kind is None:
        assert answer == {"config": json.loads(stdin)}
    else:
        assert answer["error"]["kind"] == kind
        assert words in answer["error"]["message"]
    bad = subprocess.run([sys.executable, "-m", "npsfuse._prepare"], input="{}",
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert bad.returncode == 2 and "usage" in bad.stderr and bad.stdout == ""


def test_error_kinds() -> None:
    from npsfuse._prepare import error_kind

    assert error_kind(ValueError()) == "invalid_input"
    assert error_kind(FileNotFoundError()) == "not_found"
    assert error_kind(PermissionError()) == "permission"
    assert error_kind(ImportError()) == "failed_precondition"
    assert error_kind(RuntimeError()) == "internal"


def test_daemon_starts_python_exactly_when_prepare_would_change_the_config(
    daemon_at: Any, tmp_path: Path
) -> None:
    """The daemon decides in Go whether a config needs Python; the decision
    must be npsfuse._prepare.needs_preparing's, case by case."""
    from npsfuse._prepare import needs_preparing

    d = daemon_at()
    script = Path(d.python)  # answers at once: only whether it started counts here
    script.write_text(
        f"#!/bin/sh\necho x >> {d.marker}\ncat > /dev/null\n"
        'echo \'{"error": {"kind": "invalid_input", "message": "stub"}}\'\nexit 1\n'
    )
    r = d.root
    sd = {"w": torch.ones(2, 2)}
    for name in ("ckpt", "a+b"):
        (r / name).mkdir()
        safetensors_torch.save_file(sd, str(r / name / "model.safetensors"))
        (r / name / "config.json").write_text("{}")
    (r / "adapter").mkdir()
    (r / "adapter" / "adapter_config.json").write_text("{}")
    safetensors_torch.save_file(sd, str(r / "adapter" / "adapter_model.safetensors"))
    (r / "pickled").mkdir()
    torch.save(sd, r / "pickled" / "pytorch_model.bin")
    (r / "pickled" / "config.json").write_text("{}")
    ckpt = str(r / "ckpt")
    cases = {
        "plain": {"models": [{"model": ckpt}]},
        "folder named a+b": {"models": [{"model": str(r / "a+b")}]},
        "adapter as a model": {"models": [{"model": str(r / "adapter")}]},
        "pickle": {"models": [{"model": str(r / "pickled")}]},
        "model+lora": {"models": [{"model": f"{ckpt}+{r / 'adapter'}"}]},
        "hub id": {"models": [{"model": "org/name"}]},
        "tokenizer_source: base": {"models": [{"model": ckpt}], "tokenizer_source": "base"},
        "chat_template": {"models": [{"model": ckpt}], "chat_template": "chatml"},
        "null tokenizer keys": {"models": [{"model": ckpt}], "tokenizer": None},
    }
    for i, (name, extra) in enumerate(cases.items()):
        conf = {"merge_method": "task_arithmetic", "base_model": ckpt, **extra}
        before = d.marker.read_text().count("x") if d.marker.exists() else 0
        try:
            d.client().submit_merge(conf, out_dir=r / f"out{i}").wait(timeout=120)
        except ValueError:
            pass  # refused at submit: Python cannot have started
        started = (d.marker.read_text().count("x") if d.marker.exists() else 0) > before
        assert started == needs_preparing(conf), name
