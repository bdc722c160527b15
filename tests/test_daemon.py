"""npsfused end to end: the real daemon binary, started here on a temporary
socket or loopback port, driven through ``npsfuse.client``.

The binary is ``$NPSFUSED_BIN`` if set, else the one bundled with the
installed package (``npsfuse/_native/npsfused``), else built once per session
with ``go build -o <tmp>/npsfused ./daemon/cmd/npsfused`` from the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import npsfuse
import pytest
import torch
from npsfuse.client import (
    AuthenticationError,
    Client,
    JobCancelledError,
    decompress,
)
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {"embed.weight": (130, 300), "layer.0.weight": (64, 48), "layer.0.bias": (48,)}


def family(n: int = 2, seed: int = 0, shapes=SHAPES, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g).to(dtype) for k, s in shapes.items()}
    fts = [
        {
            k: (v.float() + 0.05 * torch.randn(v.shape, generator=g)).to(dtype)
            for k, v in base.items()
        }
        for _ in range(n)
    ]
    return base, fts


def save(sd, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "model.safetensors"))
    return str(folder)


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ daemon


@pytest.fixture(scope="session")
def npsfused_bin(tmp_path_factory) -> str:
    env = os.environ.get("NPSFUSED_BIN")
    if env:
        return env
    from npsfuse._daemon_entry import binary

    if os.access(binary(), os.X_OK):
        return binary()
    out = tmp_path_factory.mktemp("bin") / "npsfused"
    subprocess.run(
        ["go", "build", "-o", str(out), "./daemon/cmd/npsfused"], cwd=ROOT, check=True, timeout=600
    )
    return str(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """One npsfused process (restartable on the same store)."""

    def __init__(self, binary: str, *, tcp: bool = False, tokens=(), workers: int = 2, drain="20s"):
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="npsfused-t-"))  # short: socket paths ≤ 107 bytes
        self.root = self.dir / "root"
        self.root.mkdir()
        self.shm = f"/dev/shm/npsfused-test-{uuid.uuid4().hex[:12]}"
        self.tokens = list(tokens)
        self.address = f"grpc://127.0.0.1:{free_port()}" if tcp else f"unix://{self.dir}/d.sock"
        self.args = [
            "--listen", self.address.replace("grpc://", "tcp://"),
            "--store", str(self.dir / "state" / "jobs.db"),
            "--data-root", str(self.root),
            "--shm-dir", self.shm,
            "--workers", str(workers),
            "--metrics-listen", "127.0.0.1:0",
            "--drain-timeout", drain,
            "--memory-budget", "2GiB",
        ]  # fmt: skip
        for t in self.tokens:
            self.args += ["--token", t]
        self.proc: subprocess.Popen | None = None
        self.metrics_addr = ""
        self.log = self.dir / "log.jsonl"

    def start(self) -> Daemon:
        self._log = open(self.log, "ab")
        start = self.log.stat().st_size
        self.proc = subprocess.Popen(
            [self.binary, *self.args], stdout=subprocess.DEVNULL, stderr=self._log
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(self.log, "rb") as f:
                f.seek(start)
                for line in f.read().decode(errors="replace").splitlines():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if rec.get("msg") == "npsfused ready":
                        self.metrics_addr = rec["metrics"]
                        return self
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"npsfused exited {self.proc.returncode}:\n{self.log.read_text()}"
                )
            time.sleep(0.02)
        raise RuntimeError(f"npsfused not ready:\n{self.log.read_text()}")

    def client(self, **kw) -> Client:
        kw.setdefault("token", self.tokens[0] if self.tokens else None)
        return Client(self.address, **kw)

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._log.close()
        return rc

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=10) as r:
            return r.read().decode()

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.shm, ignore_errors=True)


@pytest.fixture
def make_daemon(npsfused_bin) -> Iterator:
    made: list[Daemon] = []

    def make(**kw) -> Daemon:
        d = Daemon(npsfused_bin, **kw)
        made.append(d)
        return d.start()

    yield make
    for d in made:
        d.cleanup()


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon()


# ------------------------------------------------------------------- jobs


def test_merge_state_dicts_shared_memory(daemon):
    base, fts = family(3, seed=1)
    want = npsfuse.merge(base, fts, "ties", density=0.3)
    c = daemon.client()
    assert c.shm
    cfg = {
        "merge_method": "ties",
        "base_model": base,
        "models": [{"model": m} for m in fts],
        "parameters": {"density": 0.3},
    }
    job = c.submit_merge(cfg)
    got = job.result(timeout=60)
    assert same(got, want)
    assert job.status()["result"]["released"] is True
    got["layer.0.bias"].add_(1)  # results are writable (copy-on-write mapping)
    # the uploads were consumed: nothing left in the shared-memory folder
    assert os.listdir(os.path.join(daemon.shm, "uploads")) == []
    assert os.listdir(os.path.join(daemon.shm, "results")) == []


def test_merge_paths_to_folder_and_tensors(daemon):
    base, fts = family(2, seed=2, dtype=torch.bfloat16)
    paths = [
        save(sd, daemon.root / n) for sd, n in zip([base, *fts], ["base", "a", "b"], strict=True)
    ]
    want = npsfuse.merge(base, fts, "task_arithmetic", lam=0.7)
    c = daemon.client()
    cfg = {
        "merge_method": "task_arithmetic",
        "base_model": paths[0],
        "models": [{"model": p} for p in paths[1:]],
        "parameters": {"lambda": 0.7},
    }
    out = c.submit_merge(cfg, out_dir=daemon.root / "merged").result(timeout=60)
    assert out == daemon.root / "merged"
    assert same(load_file(str(out / "model.safetensors")), want)
    # the same merge as tensors over Flight (no shared memory)
    c2 = daemon.client(shm=False)
    assert same(c2.submit_merge(cfg).result(timeout=60), want)
    assert [j.type for j in c.jobs(state="done")] == ["merge", "merge"]


def test_merge_over_tcp_with_token(make_daemon):
    d = make_daemon(tcp=True, tokens=["tok-" + uuid.uuid4().hex])
    # w is 840 kB: sent in pieces
    base, fts = family(2, seed=3, shapes={"w": (300, 700), "b": (5,)})
    want = npsfuse.merge(base, fts, "dare_linear", density=0.5, seed=4)
    c = d.client()
    assert not c.shm
    cfg = {
        "merge_method": "dare_linear",
        "base_model": base,
        "models": [{"model": m} for m in fts],
        "parameters": {"density": 0.5},
        "seed": 4,
    }
    assert same(c.submit_merge(cfg).result(timeout=60), want)


def test_auth_refused_and_counted(make_daemon):
    tok = "tok-" + uuid.uuid4().hex
    d = make_daemon(tcp=True, tokens=[tok])
    with pytest.raises(AuthenticationError):
        Client(d.address).info()
    with pytest.raises(AuthenticationError):
        Client(d.address, token="wrong-token-123").jobs()
    assert Client(d.address, token=tok).health() == "ok"
    m = d.metrics()
    assert 'npsfused_auth_failures_total{reason="missing"} 1' in m
    assert 'npsfused_auth_failures_total{reason="invalid"} 1' in m


def test_refusals(daemon, tmp_path):
    c = daemon.client()
    base, fts = family(1, seed=5)
    outside = save(base, tmp_path / "outside")
    inside = save(fts[0], daemon.root / "ft")
    inside_base = save(base, daemon.root / "base")
    cfg = {"merge_method": "ties", "base_model": outside, "models": [{"model": inside}]}
    with pytest.raises(PermissionError, match="outside the data roots"):
        c.submit_merge(cfg)
    cfg = {"merge_method": "ties", "base_model": inside_base, "models": [{"model": inside}]}
    with pytest.raises(PermissionError, match="outside the data roots"):
        c.submit_merge(cfg, out_dir="/etc/npsfuse-merged")
    # shard_size and force shape a checkpoint: refused without out_dir (the
    # client used to drop them silently), also when the inputs were uploaded
    in_memory = {"merge_method": "ties", "base_model": base, "models": [{"model": fts[0]}]}
    for config in (cfg, in_memory):
        for opt in ({"shard_size": 1 << 20}, {"force": True}):
            with pytest.raises(ValueError, match="shard_size and force apply to out_dir merges"):
                c.submit_merge(config, **opt)
    assert os.listdir(os.path.join(daemon.shm, "uploads")) == []
    with pytest.raises(ValueError, match="unknown job type"):
        c.submit("transmogrify", {})
    with pytest.raises(ValueError, match="unknown merge_method"):
        c.submit_merge(
            {"merge_method": "nope", "base_model": inside, "models": [{"model": inside}]}
        )
    with pytest.raises(LookupError):
        c.job(12345)
    with pytest.raises(ValueError, match="initial population"):
        c.evolve([fts[0]])
    assert c.jobs() == []


def test_nps_prune_compress_agree(daemon):
    base, fts = family(2, seed=6)
    c = daemon.client()
    tv = c.submit_nps_prune(base, fts[0], density=0.1, subspaces=4, output="task_vector")
    tau = tv.result(timeout=60)
    n = sum(t.numel() for t in tau.values())
    assert sum(int((t != 0).sum()) for t in tau.values()) == int(0.1 * n)
    model = c.submit_nps_prune(base, fts[0], density=0.1, subspaces=4).result(timeout=60)
    for k in base:
        assert torch.allclose(model[k], base[k] + tau[k], atol=1e-6)
    comp = c.submit_compress(base, fts, density=0.1, subspaces=4)
    packed = comp.result(timeout=60)
    rebuilt = decompress(base, packed, 0)
    for k in base:
        assert torch.allclose(rebuilt[k], model[k], atol=1e-6)
    bits = [m["bits_per_param"] for m in comp.status()["result"]["models"]]
    assert bits[0] == pytest.approx((n + int(0.1 * n) * 32) / n)


def search_run(c: Client, base, ft, crash=None) -> tuple[list, list]:
    """Run an NPS search of 3 generations on a quadratic score; returns every
    asked candidate and the best weights."""
    target = torch.tensor([1.4, 0.6, 1.0, 0.3])
    s = c.nps_search(base, ft, density=0.2, subspaces=4, generations=3, seed=9, popsize=5)
    asked = []
    while True:
        cands = s.ask()
        if s.done:
            break
        if crash is not None and s.generation == 1:
            again = crash(s)  # kill -9 and restart; ask again on the new daemon
            assert [x.params for x in again] == [x.params for x in cands]
            crash = None
        asked.append([x.params for x in cands])
        s.tell([-float(((torch.tensor(x.params) - target) ** 2).sum()) for x in cands])
    best = s.best()["x"]
    s.finish()
    sd = s.result(timeout=60)
    assert sd.keys() == base.keys()
    return asked, best


def evolve_run(c: Client, models, crash=None) -> tuple[list, dict]:
    """An Evolver session of 2 generations whose score is the closeness of
    layer.0.bias to 0.3; returns every asked candidate and the final best."""
    s = c.evolve(models, generations=2, seed=4, exclude=["embed.*"])
    asked = []
    while True:
        cands = s.ask()
        if s.done:
            break
        if crash is not None and len(asked) == 4:
            again = crash(s)
            assert [x.params for x in again] == [x.params for x in cands]
            crash = None
        asked.append([x.params for x in cands])
        s.tell([-float(((x.state_dict()["layer.0.bias"] - 0.3) ** 2).sum()) for x in cands])
    best = s.best()
    s.finish()
    sd = s.result(timeout=60)
    i = best["individual"]
    assert torch.equal(sd["embed.weight"], models[i]["embed.weight"])  # excluded: kept
    return asked, best


def test_evolve_session(make_daemon):
    _, fts = family(3, seed=18)
    d = make_daemon()
    asked, best = evolve_run(d.client(), fts)
    # the initial evaluation (3), then 2 generations of 3 offspring, one at a time
    assert [len(a) for a in asked] == [3] + [1] * 6
    assert best["f"] == max(best["fitness"])

    def crash(s):
        d.kill9()
        d.start()
        s.client = d.client()
        return s.ask()

    asked2, best2 = evolve_run(d.client(), fts, crash=crash)
    assert asked2 == asked and best2 == best


def test_nps_search_session(daemon):
    base, fts = family(1, seed=7)
    c = daemon.client()
    asked, best = search_run(c, base, fts[0])
    # the start point alone (all weights 1), then 3 generations of 5
    assert [len(g) for g in asked] == [1, 5, 5, 5]
    # a candidate's tensors over shared memory and over Flight agree
    s = c.nps_search(base, fts[0], density=0.2, subspaces=4, seed=9)
    cand = s.ask()[0]
    a = cand.state_dict()
    b = daemon.client(shm=False).job(s.id).candidate_state_dict(cand.params)
    assert same(a, b)
    assert s.cancel()


def test_kill9_during_search_resumes(make_daemon):
    base, fts = family(1, seed=8)
    d = make_daemon()
    ref_asked, ref_best = search_run(d.client(), base, fts[0])

    def crash(s):
        d.kill9()
        d.start()
        s.client = d.client()
        return s.ask()

    asked, best = search_run(d.client(), base, fts[0], crash=crash)
    assert asked == ref_asked and best == ref_best


def long_merge(d: Daemon, seed: int = 10):
    """A della merge of 120 tensors of 6 models (about half a second of kernel time)."""
    shapes = {f"layer.{i}.weight": (256, 256) for i in range(120)}
    base, fts = family(6, seed=seed, shapes=shapes)
    paths = [
        save(sd, d.root / f"{n}{seed}")
        for sd, n in zip([base, *fts], ["base", "a", "b", "c", "d", "e", "f"], strict=True)
    ]
    return {
        "merge_method": "della",
        "base_model": paths[0],
        "models": [{"model": p} for p in paths[1:]],
        "parameters": {"density": 0.4},
        "seed": 3,
    }


def wait_running(job, at_least: int = 3, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = job.status()
        if st["state"] == "running" and st["progress"].get("done", 0) >= at_least:
            return
        assert st["state"] in ("queued", "running"), st
        time.sleep(0.005)
    raise TimeoutError("the merge did not start")


def test_kill9_during_merge_every_job_finishes(make_daemon):
    d = make_daemon(workers=1)
    cfg = long_merge(d)
    c = d.client()
    long = c.submit_merge(cfg, out_dir=d.root / "out")
    base, fts = family(1, seed=11)
    small = [
        c.submit_merge({"merge_method": "linear", "models": [{"model": base}, {"model": fts[0]}]})
        for _ in range(2)
    ]
    wait_running(long)
    d.kill9()
    assert not (d.root / "out").exists()
    d.start()
    c = d.client()
    for j in [long, *small]:
        j.client = c
        st = j.wait(timeout=120)
        assert st["state"] == "done", st
    assert any("resumed" in n for n in long.status()["notes"])
    want = npsfuse.merge(base, [base, fts[0]], "linear")
    for j in small:
        assert same(j.result(), want)
    # bit-identical to an uninterrupted run of the same merge
    ref = c.submit_merge(cfg, out_dir=d.root / "ref").result(timeout=120)
    assert same(
        load_file(str(d.root / "out" / "model.safetensors")),
        load_file(str(ref / "model.safetensors")),
    )
    assert not list(d.root.glob(".out.npsfuse-tmp-*"))


def test_graceful_shutdown_drains(make_daemon):
    d = make_daemon(workers=1)
    cfg = long_merge(d, seed=12)
    c = d.client()
    job = c.submit_merge(cfg, out_dir=d.root / "drained")
    wait_running(job, at_least=1)
    d.proc.send_signal(signal.SIGTERM)
    # while draining: new jobs are refused, the running one finishes
    deadline = time.monotonic() + 5
    refused = False
    while time.monotonic() < deadline and not refused:
        try:
            c.submit_merge(cfg, out_dir=d.root / "late")
        except ConnectionError:
            refused = True
        time.sleep(0.01)
    assert refused
    assert d.proc.wait(60) == 0
    d._log.close()
    d.start()
    assert d.client().job(job.id).status()["state"] == "done"
    assert (d.root / "drained" / "model.safetensors").exists()
    assert not (d.root / "late").exists()


def test_drain_timeout_checkpoints_and_resumes(make_daemon):
    d = make_daemon(workers=1, drain="100ms")
    cfg = long_merge(d, seed=13)
    job = d.client().submit_merge(cfg, out_dir=d.root / "resumed")
    wait_running(job, at_least=1)
    assert d.stop() == 0
    d.start()
    st = d.client().job(job.id).wait(timeout=120)
    assert st["state"] == "done"
    assert any("shutdown" in n for n in st["notes"])


def test_cancel_and_idempotency(make_daemon):
    d = make_daemon(workers=1)
    c = d.client()
    long = c.submit_merge(long_merge(d, seed=14), out_dir=d.root / "long")
    base, fts = family(1, seed=15)
    up = [c.upload(base), c.upload(fts[0])]
    cfg = {"merge_method": "ties", "base_model": up[0], "models": [{"model": up[1]}]}
    j1 = c.submit("merge", {"config": cfg, "result": {"shm": True}}, idempotency_key="same")
    j2 = c.submit("merge", {"config": cfg, "result": {"shm": True}}, idempotency_key="same")
    assert j1.id == j2.id
    with pytest.raises(FileExistsError):
        c.submit("merge", {"config": cfg}, idempotency_key="same")
    assert j1.cancel()
    with pytest.raises(JobCancelledError):
        j1.result(timeout=10)
    assert long.cancel()
    assert not (d.root / "long").exists()
    assert len(c.jobs()) == 2


def test_many_clients(daemon):
    base, fts = family(1, seed=16, shapes={"w": (32, 32), "b": (32,)})
    c0 = daemon.client()
    refs = [c0.upload(base), c0.upload(fts[0])]
    want = npsfuse.merge(base, fts, "ties", density=0.5)
    cfg = {
        "merge_method": "ties",
        "base_model": refs[0],
        "models": [{"model": refs[1]}],
        "parameters": {"density": 0.5},
    }
    errors: list[BaseException] = []

    def client_run() -> None:
        try:
            c = daemon.client()
            jobs = [c.submit("merge", {"config": cfg, "result": {"shm": True}}) for _ in range(20)]
            for j in jobs:
                assert same(j.result(timeout=120), want)
        except BaseException as e:  # noqa: BLE001 - collected for the assert below
            errors.append(e)

    threads = [threading.Thread(target=client_run) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert 'npsfused_jobs{state="done"} 1000' in daemon.metrics()
    assert daemon.peak_rss() < 512 << 20


def test_submit_many(daemon):
    base, fts = family(1, seed=21)
    c = daemon.client()
    refs = [c.upload(base), c.upload(fts[0])]
    want = npsfuse.merge(base, fts, "task_arithmetic")
    cfg = {"merge_method": "task_arithmetic", "base_model": refs[0], "models": [{"model": refs[1]}]}
    spec = {"config": cfg, "result": {"shm": True}}
    items = [{"type": "merge", "spec": spec, "idempotency_key": f"b-{i}"} for i in range(5)]
    jobs = c.submit_many(items)
    assert len({j.id for j in jobs}) == 5
    for j in jobs:
        assert same(j.result(timeout=60), want)
    # a retried call finds the same jobs (one per key)
    assert [j.id for j in c.submit_many(items)] == [j.id for j in jobs]
    assert c.submit_many([]) == []
    # one bad job refuses the whole call, naming it; nothing is stored
    with pytest.raises(ValueError, match=r"jobs\[1\] \(teleport\)"):
        c.submit_many([{"type": "merge", "spec": spec}, {"type": "teleport", "spec": {}}])
    with pytest.raises(TypeError, match=r"jobs\[0\]"):
        c.submit_many(["merge"])
    with pytest.raises(ValueError, match=r"jobs\[0\]: unknown keys \['priority'\]"):
        c.submit_many([{"type": "merge", "spec": spec, "priority": 1}])
    with pytest.raises(ValueError, match=r"jobs\[0\]: 'type'"):
        c.submit_many([{"spec": spec}])
    assert len(c.jobs(type="merge")) == 5


def _free_slabs(d: Daemon) -> list[str]:
    return sorted(os.listdir(os.path.join(d.shm, "free")))


def test_download_recycles_slabs_without_overwriting_held_tensors(daemon):
    c = daemon.client()
    g = torch.Generator().manual_seed(22)
    sd = {"w": torch.randn(1024, 512, generator=g), "b": torch.randn(512, generator=g)}  # > 1 MiB
    ref = c.upload(sd)
    a = c.download_upload(ref)
    b = c.download_upload(ref)  # a is held: b goes into another slab
    assert same(a, sd) and same(b, sd)
    b["w"].fill_(7.0)
    assert same(a, sd), "writing one result changed another"
    del b
    assert c.release_results() == 1  # b's slab is handed back
    assert len(_free_slabs(daemon)) == 1
    for _ in range(3):  # steady state: the free slab is reused, a stays intact
        x = c.download_upload(ref)
        assert same(x, sd)
        del x
        assert c.release_results() == 1
        assert same(a, sd)
    assert len(_free_slabs(daemon)) == 1
    assert len(c._slabs.maps) == 3  # the upload's slab and two result slabs, no more
    del a
    c.release_results()
    assert len(_free_slabs(daemon)) == 2
    c.delete_upload(ref)


def test_job_result_slab_released_when_tensors_are_gone(daemon):
    c = daemon.client()
    g = torch.Generator().manual_seed(23)
    base = {"w": torch.randn(1024, 512, generator=g)}
    ft = {"w": base["w"] + 0.1}
    want = npsfuse.merge(base, [ft], "task_arithmetic")
    job = c.submit_merge(
        {"merge_method": "task_arithmetic", "base_model": base, "models": [{"model": ft}]}
    )
    got = job.result(timeout=60)
    assert same(got, want)
    res = job.status()["result"]
    assert res["slab"].startswith(c._slabs.prefix) and not res.get("released")
    view = got["w"][:2]  # a view keeps the slab in use
    del got
    job._result = None
    assert c.release_results() == 0
    del view
    assert c.release_results() == 1
    res = job.status()["result"]
    assert res["released"] is True and not os.path.exists(res["path"])
    assert f"{res['slab']}.arrow" in _free_slabs(daemon)
    # the next result of the same size goes into that slab
    job2 = c.submit_merge(
        {"merge_method": "task_arithmetic", "base_model": base, "models": [{"model": ft}]}
    )
    assert same(job2.result(timeout=60), want)
    assert job2.status()["result"]["slab"] == res["slab"]


def test_print_config_masks_tokens(npsfused_bin, tmp_path):
    secret = "very-secret-" + uuid.uuid4().hex
    cfg = tmp_path / "npsfused.yaml"
    cfg.write_text(f"workers: 3\ntokens: [{secret}]\nlisten: tcp://127.0.0.1:7777\n")
    out = subprocess.run(
        [npsfused_bin, "--config", str(cfg), "--print-config", "--workers", "5"],
        capture_output=True, text=True, check=True, env={**os.environ, "NPSFUSE_WORKERS": "4"},
    )  # fmt: skip
    assert secret not in out.stdout and "<masked" in out.stdout
    assert "workers: 5" in out.stdout and "listen: tcp://127.0.0.1:7777" in out.stdout


def test_merge_on_save_callback(daemon):
    pytest.importorskip("transformers")
    from npsfuse.callbacks import MergeOnSave
    from transformers import TrainerControl, TrainerState

    base, fts = family(1, seed=17)
    base_dir = save(base, daemon.root / "base")
    out = daemon.root / "run"
    save(fts[0], out / "checkpoint-5")
    cb = MergeOnSave(
        base_dir, method="task_arithmetic", parameters={"lambda": 0.5}, client=daemon.client()
    )
    args = SimpleNamespace(output_dir=str(out))  # the callback reads output_dir only
    state = TrainerState(global_step=5)
    cb.on_save(args, state, TrainerControl())
    cb.on_save(args, state, TrainerControl())  # a repeated save does not merge twice
    assert len({j.id for j in cb.jobs}) == 1
    cb.on_train_end(args, state, TrainerControl())
    merged = load_file(str(out / "merged" / "checkpoint-5" / "model.safetensors"))
    assert same(merged, npsfuse.merge(base, fts, "task_arithmetic", lam=0.5))
