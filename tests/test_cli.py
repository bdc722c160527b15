"""``npsfuse merge`` (the command line) and ``npsfuse.merge_checkpoints`` on
checkpoints written to disk: tiny Llama models saved by transformers, and
hand-made broken safetensors files.

The streaming merge must equal :func:`npsfuse.merge` on the same state dicts
bit for bit, write a loadable Hugging Face folder, and refuse each kind of bad
input with exit code 2, a message naming the file (and tensor), and no output
folder.
"""

from __future__ import annotations

import inspect
import json
import os
import pty
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import npsfuse
import pytest
import torch
import transformers  # a test requirement (requirements-dev.txt): missing, the suite must fail
import yaml
from npsfuse import cli
from npsfuse.merging import USES_DENSITY
from safetensors.torch import load_file, save_file

StateDict = dict[str, torch.Tensor]
SHARD = "100KB"  # splits the tiny Llama (≈ 420 kB in float32) into 5 shards


def _env() -> dict[str, str]:
    """The environment for a child process that imports this npsfuse."""
    env = dict(os.environ)
    src = str(Path(npsfuse.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _save_pretrained(model: Any, path: Path) -> None:
    """``save_pretrained`` as safetensors shards of at most ``SHARD``.

    transformers < 5 needs ``safe_serialization=True``; 5 always writes
    safetensors and has no such argument.
    """
    kw: dict[str, Any] = {"max_shard_size": SHARD}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kw["safe_serialization"] = True
    model.save_pretrained(path, **kw)


class Family:
    """A tiny Llama base and three fine-tunes, saved as sharded checkpoints."""

    def __init__(self, root: Path) -> None:
        torch.manual_seed(0)
        config = transformers.LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=False,
        )
        model = transformers.LlamaForCausalLM(config).eval()
        self.root = root
        self.base = root / "base"
        _save_pretrained(model, self.base)
        (self.base / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}')
        self.base_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.models: list[Path] = []
        for i in range(3):
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(self.base_sd[name] + 0.02 * torch.randn_like(p))
            path = root / f"ft{i}"
            _save_pretrained(model, path)
            self.models.append(path)

    def config(self, method: str, **extra: Any) -> dict[str, Any]:
        """A mergekit-style config over the family (absolute paths)."""
        cfg: dict[str, Any] = {
            "merge_method": method,
            "base_model": str(self.base),
            "models": [{"model": str(m)} for m in self.models],
        }
        cfg.update(extra)
        return cfg


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Family:
    return Family(tmp_path_factory.mktemp("llama"))


def write_yaml(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def load_output(out: Path) -> StateDict:
    """Every tensor of a (possibly sharded) output folder, via safetensors.torch."""
    files = sorted(out.glob("*.safetensors"))
    assert files, f"no weights in {out}"
    sd: StateDict = {}
    for f in files:
        part = load_file(f)
        assert not set(part) & set(sd), f"tensor in two shards: {set(part) & set(sd)}"
        sd.update(part)
    return sd


def assert_bitwise_equal(got: StateDict, want: StateDict) -> None:
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        g = got[k]
        assert g.dtype == w.dtype and g.shape == w.shape, (k, g.dtype, w.dtype, g.shape, w.shape)
        bits = (g.reshape(-1).view(torch.uint8), w.contiguous().reshape(-1).view(torch.uint8))
        assert torch.equal(*bits), f"{k} differs"


def run_cli(
    *args: str, stderr: Any = subprocess.PIPE, script: bool = False, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m npsfuse.cli`` (or the console script) in a child process."""
    if script:
        cmd = console_script()
    else:
        cmd = [sys.executable, "-m", "npsfuse.cli"]
    return subprocess.run(
        [*cmd, *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=120,
        check=False,
    )


def console_script() -> list[str]:
    """The installed ``npsfuse`` script, or (in a source checkout) exactly
    what its generated wrapper runs: the ``[project.scripts]`` entry point."""
    exe = Path(sys.executable).parent / "npsfuse"
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    pyproject = Path(npsfuse.__file__).resolve().parents[2] / "pyproject.toml"
    try:
        import tomllib
    except ImportError:  # Python 3.10
        pytest.skip("no installed npsfuse script and no tomllib to read the entry point")
    entry = tomllib.loads(pyproject.read_text())["project"]["scripts"]["npsfuse"]
    module, func = entry.split(":")
    return [
        sys.executable,
        "-c",
        f"import sys; from {module} import {func}; sys.argv[0] = 'npsfuse'; sys.exit({func}())",
    ]


# ---------------------------------------------------------------------------
# Equality with the in-memory merge


#: (method, config extras, npsfuse.merge keyword arguments)
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("ties", {"parameters": {"density": 0.5, "int8_mask": True}}, {"density": 0.5}),
    ("task_arithmetic", {"parameters": {"lambda": 0.8}}, {"lam": 0.8, "weights": [0.3, 0.5, 1.2]}),
    ("dare_ties", {"parameters": {"density": 0.6}, "seed": 7}, {"density": 0.6, "seed": 7}),
    ("linear", {}, {"weights": [1.0, 2.0, 0.5]}),
]


def config_for(llama: Family, method: str, extra: dict[str, Any], kw: dict[str, Any]) -> dict:
    cfg = llama.config(method, **extra)
    for m, w in zip(cfg["models"], kw.get("weights", [1.0] * 3), strict=True):
        m["parameters"] = {"weight": w}
    if method == "linear":
        del cfg["base_model"]
    return cfg


def expected(llama: Family, method: str, kw: dict[str, Any], dtype: torch.dtype | None = None):
    if method in USES_DENSITY:  # the YAML's default density; others refuse it
        kw = {"density": 1.0, **kw}
    base = llama.models[0] if method == "linear" else llama.base
    return npsfuse.merge(str(base), [str(m) for m in llama.models], method, dtype=dtype, **kw)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_in_memory_merge(llama: Family, tmp_path: Path, case) -> None:
    method, extra, kw = case
    cfg = config_for(llama, method, extra, kw)
    out = npsfuse.merge_checkpoints(
        write_yaml(tmp_path / "merge.yaml", cfg), tmp_path / "out", shard_size=SHARD, quiet=True
    )
    assert out == tmp_path / "out"
    assert_bitwise_equal(load_output(out), expected(llama, method, kw))
    # The dict form of the config gives the same bytes.
    out2 = npsfuse.merge_checkpoints(cfg, tmp_path / "out2", shard_size=SHARD, quiet=True)
    for f in out.glob("*.safetensors"):
        assert f.read_bytes() == (out2 / f.name).read_bytes()


def test_cli_module_quiet(llama: Family, tmp_path: Path) -> None:
    """``python -m npsfuse.cli merge --quiet``: same tensors, nothing printed."""
    method, extra, kw = CASES[0]
    cfg = write_yaml(tmp_path / "ties.yaml", config_for(llama, method, extra, kw))
    r = run_cli(
        "merge", str(cfg), str(tmp_path / "out"), "--shard-size", SHARD, "--threads", "1", "--quiet"
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and r.stdout == ""
    assert_bitwise_equal(load_output(tmp_path / "out"), expected(llama, method, kw))


def test_cli_timing(llama: Family, tmp_path: Path) -> None:
    """``--timing`` prints one JSON line of where the time went, even with
    ``--quiet``; the output is unchanged."""
    method, extra, kw = CASES[0]
    cfg = write_yaml(tmp_path / "ties.yaml", config_for(llama, method, extra, kw))
    r = run_cli("merge", str(cfg), str(tmp_path / "out"), "--shard-size", SHARD, "--quiet",
                "--timing")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npsfuse: timing: "), r.stderr
    t = json.loads(lines[0].removeprefix("npsfuse: timing: "))
    keys = {"plan_s", "read_wait_s", "merge_s", "write_wait_s", "finish_s", "writer_s", "sync_s"}
    assert keys | {"seconds"} == set(t)
    assert all(t[k] >= 0 for k in keys) and t["merge_s"] > 0
    parts = sum(t[k] for k in ("plan_s", "read_wait_s", "merge_s", "write_wait_s", "finish_s"))
    assert parts <= t["seconds"] * 1.01 + 1e-3
    assert_bitwise_equal(load_output(tmp_path / "out"), expected(llama, method, kw))


def test_console_script(llama: Family, tmp_path: Path) -> None:
    """The ``npsfuse`` script: prints the output folder and the notes, and no
    progress line when stderr is not a terminal; relative paths resolve against
    the working directory, as in mergekit."""
    method, extra, kw = CASES[1]
    cfg = config_for(
        llama, method, {**extra, "parameters": {**extra["parameters"], "int8_mask": True}}, kw
    )
    cfg["base_model"] = os.path.relpath(llama.base, llama.root)
    write_yaml(llama.root / "ta.yaml", cfg)
    out = tmp_path / "out"
    r = run_cli("merge", "ta.yaml", str(out), "--dtype", "bfloat16", script=True, cwd=llama.root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert "note: parameters.int8_mask is accepted and ignored" in r.stderr
    assert "merging" not in r.stderr and "\r" not in r.stderr
    got = load_output(out)
    assert_bitwise_equal(got, expected(llama, method, kw, dtype=torch.bfloat16))
    hf = json.loads((out / "config.json").read_text())
    key = (
        "dtype"
        if "dtype" in json.loads((llama.base / "config.json").read_text())
        else "torch_dtype"
    )
    assert hf[key] == "bfloat16"


def test_progress_on_a_terminal(llama: Family, tmp_path: Path) -> None:
    """With stderr on a terminal the progress line is drawn."""
    cfg = write_yaml(tmp_path / "c.yaml", llama.config("task_arithmetic"))
    master, slave = pty.openpty()
    try:
        r = run_cli("merge", str(cfg), str(tmp_path / "out"), stderr=slave)
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                b = os.read(master, 4096)
            except OSError:  # EIO once the child side is closed and drained
                break
            if not b:
                break
            chunks.append(b)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert r.returncode == 0
    text = b"".join(chunks).decode()
    assert "merging 1/" in text and "merged 21 tensors" in text, text


# ---------------------------------------------------------------------------
# The output folder


def test_sharded_output_and_index(llama: Family, tmp_path: Path) -> None:
    out = npsfuse.merge_checkpoints(
        llama.config("ties", parameters={"density": 0.3}),
        tmp_path / "out",
        shard_size="100KB",
        quiet=True,
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    n = len(shards)
    assert n >= 3
    assert [s.name for s in shards] == [
        f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)
    ]
    assert not (out / "model.safetensors").exists()
    merged = load_output(out)
    assert set(index["weight_map"]) == set(merged) == set(llama.base_sd)
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in merged.values()
    )
    for s in shards:
        part = load_file(s)
        assert all(index["weight_map"][k] == s.name for k in part)
        data = sum(t.numel() * t.element_size() for t in part.values())
        assert data <= 100_000 or len(part) == 1, (s.name, data)
    for f in ("config.json", "generation_config.json", "tokenizer.json", "README.md"):
        assert (out / f).is_file(), f
    assert (out / "tokenizer.json").read_bytes() == (llama.base / "tokenizer.json").read_bytes()
    card = (out / "README.md").read_text()
    assert "merge_method: ties" in card and str(llama.models[2]) in card
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "out"]
    assert leftovers == [], leftovers

    # One shard: a plain model.safetensors and no index.
    one = npsfuse.merge_checkpoints(
        llama.config("ties", parameters={"density": 0.3}), tmp_path / "one", quiet=True
    )
    assert sorted(p.name for p in one.glob("*.safetensors")) == ["model.safetensors"]
    assert not (one / "model.safetensors.index.json").exists()
    assert_bitwise_equal(load_output(one), merged)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["float32", "bfloat16"])
def test_from_pretrained_loads(llama: Family, tmp_path: Path, dtype: torch.dtype | None) -> None:
    out = npsfuse.merge_checkpoints(
        llama.config("dare_ties", parameters={"density": 0.5}, seed=3),
        tmp_path / "out",
        shard_size=SHARD,
        dtype=None if dtype is None else "bfloat16",
        quiet=True,
    )
    merged = load_output(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    sd = model.state_dict()
    assert set(sd) == set(merged)
    for k, t in merged.items():
        assert torch.equal(sd[k].to(t.dtype), t), k
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 42]])).logits
    assert logits.shape == (1, 4, 256) and torch.isfinite(logits).all()


def test_out_dir_refused_unless_force(llama: Family, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cfg = write_yaml(tmp_path / "c.yaml", llama.config("task_arithmetic"))
    assert cli.main(["merge", str(cfg), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{out} exists and is not empty (use --force to replace it)" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "out"]
    assert cli.main(["merge", str(cfg), str(out), "--quiet", "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "out"]


# ---------------------------------------------------------------------------
# Bad input: exit code 2, a message naming file and tensor, nothing written


def header_file(
    header: dict[str, Any] | str, data: bytes = b"", length: int | None = None
) -> bytes:
    """A safetensors file from a header (dict or raw text) and data bytes;
    ``length`` overrides the 8-byte header-length prefix."""
    h = header if isinstance(header, str) else json.dumps(header)
    hb = h.encode()
    return struct.pack("<Q", len(hb) if length is None else length) + hb + data


def f32(shape: list[int], lo: int, hi: int) -> dict[str, Any]:
    return {"dtype": "F32", "shape": shape, "data_offsets": [lo, hi]}


Break = Callable[[Path], tuple[str, list[str]]]


def _small(tmp: Path) -> tuple[Path, list[Path]]:
    """A base and two fine-tunes of three tensors, single files."""
    g = torch.Generator().manual_seed(1)
    base = {
        "a.weight": torch.randn(6, 4, generator=g),
        "b.bias": torch.randn(4, generator=g),
        "c.weight": torch.randn(3, 3, generator=g),
    }
    paths = []
    for name in ("base", "ft0", "ft1"):
        d = tmp / name
        d.mkdir()
        sd = (
            base
            if name == "base"
            else {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        )
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        paths.append(d)
    return paths[0], paths[1:]


def _replace(path: Path, content: bytes) -> Path:
    f = path / "model.safetensors"
    f.write_bytes(content)
    return f


def _modify(path: Path, fn: Callable[[StateDict], StateDict]) -> Path:
    f = path / "model.safetensors"
    save_file(fn(load_file(f)), str(f))
    return f


def _with(sd: StateDict, **changes: torch.Tensor | None) -> StateDict:
    out = dict(sd)
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def _nan(sd: StateDict) -> StateDict:
    c = sd["c.weight"].clone()
    c[1, 2] = float("nan")
    return _with(sd, c__weight=c)


def _inf(sd: StateDict) -> StateDict:
    a = sd["a.weight"].clone()
    a[5, 3] = float("-inf")
    return _with(sd, a__weight=a)


#: name → (function of the second model's folder returning the file at fault
#: and the substrings the message must hold; "{f}" is that file)
BAD: dict[str, Callable[[Path], tuple[Path | str, list[str]]]] = {
    "missing file": lambda d: (str(d) + "-gone", ["models[1]: model {f} does not exist"]),
    "not safetensors": lambda d: (
        _replace(d, b"version https://git-lfs.github.com/spec/v1\n"),
        ["{f}: header length", "exceeds the 100000000-byte limit"],
    ),
    "truncated": lambda d: (
        _replace(d, (d / "model.safetensors").read_bytes()[:-10]),
        ["{f}: tensor ", "end beyond the"],
    ),
    "header length beyond the file": lambda d: (
        _replace(d, header_file("{}", length=1000)),
        ["{f}: header length 1000 runs past the end"],
    ),
    "header over 100 MB": lambda d: (
        _replace(d, header_file("{}", length=100_000_001)),
        ["{f}: header length 100000001 exceeds"],
    ),
    "invalid JSON": lambda d: (
        _replace(d, header_file('{"a.weight": {"dtype": ')),
        ["{f}: ", "not valid JSON"],
    ),
    "unknown dtype": lambda d: (
        _replace(
            d,
            header_file(
                {"a.weight": {"dtype": "F24", "shape": [1], "data_offsets": [0, 3]}}, b"\0" * 3
            ),
        ),
        ['{f}: tensor "a.weight": unknown dtype "F24"'],
    ),
    "offsets out of range": lambda d: (
        _replace(d, header_file({"a.weight": f32([4], 0, 16)}, b"\0" * 8)),
        ['{f}: tensor "a.weight": data_offsets [0, 16] end beyond'],
    ),
    "offsets overlapping": lambda d: (
        _replace(
            d, header_file({"a.weight": f32([2], 0, 8), "b.bias": f32([2], 4, 12)}, b"\0" * 12)
        ),
        ['{f}: tensor "b.bias": data_offsets [4, 12] overlap tensor "a.weight"'],
    ),
    "shape x dtype not the byte length": lambda d: (
        _replace(d, header_file({"a.weight": f32([3, 3], 0, 32)}, b"\0" * 32)),
        [
            '{f}: tensor "a.weight": data_offsets [0, 32] hold 32 bytes, '
            "dtype F32 shape [3, 3] needs 36"
        ],
    ),
    "tensor missing in one model": lambda d: (
        _modify(d, lambda sd: _with(sd, b__bias=None)),
        ['tensor "b.bias" is missing from model 1 (' + str(d) + ")", "--allow-missing"],
    ),
    "shape mismatch": lambda d: (
        _modify(d, lambda sd: _with(sd, c__weight=torch.zeros(9))),
        ['tensor "c.weight" has shape [9] in model 1 ({f}) but [3 3] in the base'],
    ),
    "NaN": lambda d: (
        _modify(d, _nan),
        ['tensor "c.weight": model 1 has NaN at flat index 5', str(d)],
    ),
    "Inf": lambda d: (
        _modify(d, _inf),
        ['tensor "a.weight": model 1 has -Inf at flat index 23', str(d)],
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input(tmp_path: Path, capsys, name: str) -> None:
    base, models = _small(tmp_path)
    fault, wants = BAD[name](models[1])
    cfg = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [
            {"model": str(models[0])},
            {"model": str(fault) if name == "missing file" else str(models[1])},
        ],
        "parameters": {"density": 0.5},
    }
    yml = write_yaml(tmp_path / "merge.yaml", cfg)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    assert cli.main(["merge", str(yml), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npsfuse: error: "), err
    for w in wants:
        assert w.replace("{f}", str(fault)) in err, f"{w!r} not in {err!r}"
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary folder left


def test_bad_input_subprocess(tmp_path: Path) -> None:
    """The same through a child process: exit status 2 and the message."""
    base, models = _small(tmp_path)
    f = _replace(models[0], header_file({"a.weight": f32([4], 0, 16)}, b"\0" * 8))
    yml = write_yaml(
        tmp_path / "m.yaml",
        {
            "merge_method": "task_arithmetic",
            "base_model": str(base),
            "models": [{"model": str(m)} for m in models],
        },
    )
    r = run_cli("merge", str(yml), str(tmp_path / "out"))
    assert r.returncode == 2
    assert f'npsfuse: error: safetensors: {f}: tensor "a.weight"' in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_allow_missing_keeps_base_tensor(tmp_path: Path, capsys) -> None:
    base, models = _small(tmp_path)
    _modify(models[1], lambda sd: _with(sd, b__bias=None))
    yml = write_yaml(
        tmp_path / "m.yaml",
        {
            "merge_method": "task_arithmetic",
            "base_model": str(base),
            "models": [{"model": str(m)} for m in models],
        },
    )
    out = tmp_path / "out"
    assert cli.main(["merge", str(yml), str(out), "--allow-missing"]) == 0
    err = capsys.readouterr().err
    note = f'note: tensor "b.bias" is missing from model 1 ({models[1]}): the base\'s tensor'
    assert note + " is kept" in err
    got = load_output(out)
    base_sd = load_file(base / "model.safetensors")
    assert torch.equal(got["b.bias"], base_sd["b.bias"])
    want = npsfuse.merge(
        _with(base_sd, b__bias=None),
        [_with(load_file(m / "model.safetensors"), b__bias=None) for m in models],
        "task_arithmetic",
    )
    for k, v in want.items():
        assert torch.equal(got[k], v), k


def test_config_problems_listed_at_once(tmp_path: Path, capsys) -> None:
    base, models = _small(tmp_path)
    yml = write_yaml(
        tmp_path / "m.yaml",
        {
            "merge_method": "ties",
            "base_model": str(base),
            "models": [
                {"model": str(models[0]), "parameters": {"density": 1.5}},
                {"model": str(tmp_path / "nope")},
            ],
            "parameters": {"epsilon": 0.1, "int8_mask": True},
            "modules": {},
        },
    )
    assert cli.main(["merge", str(yml), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    for w in (
        "models[0].parameters.density must lie in (0, 1], got 1.5",
        f"models[1]: model {tmp_path / 'nope'} does not exist",
        "parameters.epsilon is not a parameter of",
        'unknown key "modules"',
    ):
        assert w in err, (w, err)
    assert not (tmp_path / "out").exists()
    assert cli.main(["merge", str(tmp_path / "missing.yaml"), str(tmp_path / "out")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_merge_checkpoints_names_what_a_bad_config_path_is(tmp_path: Path) -> None:
    """The API says what the CLI says: missing, a directory, a FIFO."""
    with pytest.raises(FileNotFoundError, match="does not exist"):
        npsfuse.merge_checkpoints(tmp_path / "missing.yaml", tmp_path / "out")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        npsfuse.merge_checkpoints(tmp_path, tmp_path / "out")
    fifo = tmp_path / "merge.yaml"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="is a FIFO, not a regular file"):
        npsfuse.merge_checkpoints(fifo, tmp_path / "out")
