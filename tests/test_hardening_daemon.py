"""npsfused under hostile or unlucky input (issue 16), against the real
binary: a retried job never replaces a folder the user did not allow, one
submit cannot crash the daemon, ``force`` never deletes a data root or the
daemon's own folders, links and FIFOs inside allowed folders are refused,
and the messages say what happened.

Uses the ``Daemon`` harness of ``test_daemon.py`` (same binary lookup).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from npsfuse.client import SCHEMA
from pyarrow import flight
from safetensors.torch import save_file
from test_daemon import Daemon, family, npsfused_bin, save  # noqa: F401  (fixture)


@pytest.fixture
def daemons(npsfused_bin):  # noqa: F811
    """Makes daemons with extra or replaced flags; kills them at the end."""
    made: list[Daemon] = []

    def make(start: bool = True, **flags: str) -> Daemon:
        d = Daemon(npsfused_bin)
        for k, v in flags.items():
            flag = "--" + k.replace("_", "-")
            if flag in d.args:
                d.args[d.args.index(flag) + 1] = v
            else:
                d.args += [flag, v]
        made.append(d)
        return d.start() if start else d

    yield make
    for d in made:
        d.cleanup()


def alive(d: Daemon) -> None:
    """The daemon still runs and answers."""
    assert d.proc is not None and d.proc.poll() is None, d.log.read_text()[-3000:]
    assert d.client().info()["pid"] == d.proc.pid


def folder_state(p: Path) -> dict[str, bytes]:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


# ------------------------------------------------------------ High 1


def test_retry_never_replaces_a_folder_the_user_did_not_allow(daemons):
    """Issue 16 High 1: a merge into an existing non-empty folder without
    ``force`` waits for memory; kill -9; after the restart the retried job
    fails with "not empty" instead of replacing the folder."""
    d = daemons(workers="2", memory_budget="80MiB")
    c = d.client()
    # A session holds 8·numel + 64 MiB of the budget while it is open.
    base, fts = family(1, seed=31)
    sb, sm = save(base, d.root / "sbase"), save(fts[0], d.root / "sft")
    sess = c.submit("nps_search", {"base": sb, "model": sm, "subspaces": 2})
    sess.ask(timeout=60)
    # This merge needs 4 × 4 MiB more than is left: it waits in the budget.
    big, bfts = family(1, seed=32, shapes={"w": (1024, 1024)})
    mb, mm = save(big, d.root / "mbase"), save(bfts[0], d.root / "mft")
    keep = d.root / "keep"
    keep.mkdir()
    (keep / "precious.txt").write_text("mine")
    before = folder_state(keep)
    job = c.submit_merge(
        {"merge_method": "task_arithmetic", "base_model": mb, "models": [{"model": mm}]},
        out_dir=keep,
    )
    deadline = time.monotonic() + 30
    while job.state != "running":
        assert time.monotonic() < deadline, job.status()
        time.sleep(0.02)
    time.sleep(0.3)
    assert job.state == "running"  # waiting for memory
    d.kill9()
    d.start()
    c = d.client()
    c.job(sess.id).cancel()  # frees the budget whichever job took it first
    st = c.job(job.id).wait(timeout=60)
    assert st["state"] == "failed", st
    assert "not empty" in st["error"]
    assert st["attempts"] >= 2
    assert folder_state(keep) == before
    assert not list(d.root.glob(".keep.npsfuse-tmp-*"))
    alive(d)


# ------------------------------------------------------------ High 3


@pytest.mark.parametrize("popsize", [10**12, 2**62])
def test_huge_popsize_is_refused_and_the_daemon_lives(daemons, popsize):
    d = daemons()
    c = d.client()
    base, fts = family(1, seed=33)
    b, m = save(base, d.root / "b"), save(fts[0], d.root / "m")
    for optimizer in ("cma", "de"):
        with pytest.raises(ValueError, match=rf"popsize {popsize} is over the limit of 10000"):
            c.submit(
                "nps_search", {"base": b, "model": m, "popsize": popsize, "optimizer": optimizer}
            )
    alive(d)
    assert c.jobs() == []


# ------------------------------------------------------------ Medium 6


def test_force_never_deletes_a_data_root_or_pending_uploads(daemons):
    d = daemons()
    c = d.client()
    base, fts = family(1, seed=34)
    b, m = save(base, d.root / "b"), save(fts[0], d.root / "m")
    pending = Path(d.shm) / "uploads" / "pending.arrow"
    pending.write_bytes(b"not yet consumed")
    cfg = {"merge_method": "task_arithmetic", "base_model": b, "models": [{"model": m}]}
    before = folder_state(d.root)
    for out in (d.root, Path(d.shm) / "uploads", Path(d.shm), d.dir / "state" / "uploads"):
        with pytest.raises((ValueError, PermissionError), match=re.escape(str(out))):
            c.submit_merge(cfg, out_dir=out, force=True)
    assert folder_state(d.root) == before
    assert pending.read_bytes() == b"not yet consumed"
    assert c.jobs() == []
    alive(d)


# ------------------------------------------------------------ Medium 5


def test_links_out_of_the_data_roots_are_refused(daemons, tmp_path):
    d = daemons()
    c = d.client()
    base, fts = family(1, seed=35)
    b, m = save(base, d.root / "b"), save(fts[0], d.root / "m")
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "do not copy"}')
    save_file(fts[0], str(tmp_path / "outside.safetensors"))
    # a weight file and a tokenizer file linked out of the roots
    w = d.root / "linked-weights"
    w.mkdir()
    (w / "model.safetensors").symlink_to(tmp_path / "outside.safetensors")
    t = d.root / "linked-tokenizer"
    shutil.copytree(b, t)
    (t / "tokenizer.json").symlink_to(secret)
    for cfg in (
        {"merge_method": "task_arithmetic", "base_model": b, "models": [{"model": str(w)}]},
        {"merge_method": "task_arithmetic", "base_model": str(t), "models": [{"model": m}]},
    ):
        with pytest.raises(PermissionError, match="outside the data roots"):
            c.submit_merge(cfg, out_dir=d.root / "out")
    assert not (d.root / "out").exists()
    # a link that stays inside the roots (a Hugging Face cache) is fine
    inside = d.root / "cache-like"
    inside.mkdir()
    (inside / "model.safetensors").symlink_to(Path(m) / "model.safetensors")
    job = c.submit_merge(
        {"merge_method": "task_arithmetic", "base_model": b, "models": [{"model": str(inside)}]},
        out_dir=d.root / "ok",
    )
    assert job.wait(timeout=60)["state"] == "done"
    alive(d)


# ------------------------------------------------------------ Medium 9


def test_fifo_inputs_are_refused_and_workers_stay_free(daemons):
    d = daemons(workers="1")
    c = d.client()
    base, fts = family(1, seed=36)
    b, m = save(base, d.root / "b"), save(fts[0], d.root / "m")
    weights = d.root / "fifo-weights"
    weights.mkdir()
    os.mkfifo(weights / "model.safetensors")
    cfgdir = d.root / "fifo-config"
    shutil.copytree(b, cfgdir)
    os.mkfifo(cfgdir / "config.json")
    stats = d.root / "fifo.fisher.safetensors"
    os.mkfifo(stats)

    def ta(base: str, model: str) -> dict:
        return {"merge_method": "task_arithmetic", "base_model": base, "models": [{"model": model}]}

    fisher = {
        "merge_method": "fisher",
        "base_model": b,
        "models": [{"model": m, "parameters": {"statistics": str(stats)}}],
    }
    cases = [
        (ta(b, str(weights)), weights / "model.safetensors", d.root / "o1"),
        (ta(b, str(weights)), weights / "model.safetensors", None),
        (ta(str(cfgdir), m), cfgdir / "config.json", d.root / "o2"),
        (fisher, stats, d.root / "o3"),
    ]
    for cfg, fifo, out in cases:
        with pytest.raises(ValueError, match=re.escape(str(fifo)) + ".*FIFO"):
            c.submit_merge(cfg, out_dir=out)
    with pytest.raises(ValueError, match="FIFO"):
        c.submit("nps_prune", {"base": b, "model": str(weights)})
    # the only worker is free: a normal merge still runs
    ok = c.submit_merge(
        {"merge_method": "task_arithmetic", "base_model": b, "models": [{"model": m}]},
        out_dir=d.root / "fine",
    )
    assert ok.wait(timeout=60)["state"] == "done"
    assert d.stop() == 0  # and SIGTERM drains at once


# ------------------------------------------------------------ Low 15


def test_negative_seed_message_has_no_go_internals(daemons):
    d = daemons()
    c = d.client()
    base, fts = family(1, seed=37)
    b, m = save(base, d.root / "b"), save(fts[0], d.root / "m")
    for typ in ("nps_search", "nps_prune"):
        with pytest.raises(ValueError) as e:
            c.submit(typ, {"base": b, "model": m, "seed": -1})
        msg = str(e.value)
        assert "seed: got number -1, want an integer in [0, 2^64)" in msg, msg
        assert "Go struct" not in msg and "uint64" not in msg and "npsOptions" not in msg


def _unshare_prefix() -> list[str] | None:
    """A command prefix that runs a program in a new mount namespace where
    it may mount a tmpfs (root, or an unprivileged user namespace)."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        probe = prefix + [
            "sh",
            "-c",
            "d=$(mktemp -d) && mount -t tmpfs tmpfs $d && umount $d && rmdir $d",
        ]
        if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
            return prefix
    return None


def on_tmpfs(d: Daemon, folder: Path, prefix: list[str], tmp: Path, size: str = "2m") -> None:
    """Make d start in a mount namespace of its own with a tmpfs of size
    (mode 0700) on folder: a small disk that only the daemon sees."""
    wrapper = tmp / "npsfused-on-tmpfs"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec {' '.join(prefix)} sh -c "
        f'\'mount -t tmpfs -o size={size},mode=700 tmpfs "$0" && exec "$@"\' '
        f'"{folder}" "{d.binary}" "$@"\n'
    )
    wrapper.chmod(0o755)
    d.binary = str(wrapper)


def merge_config(
    d: Daemon, name: str, n: int, seed: int, method: str = "task_arithmetic", shapes=None, **params
) -> tuple[dict, list[str]]:
    """A family saved under d's data root and a merge config of it."""
    base, fts = family(n, seed=seed, **({"shapes": shapes} if shapes else {}))
    sb = save(base, d.root / f"{name}base")
    sms = [save(ft, d.root / f"{name}ft{i}") for i, ft in enumerate(fts)]
    cfg = {"merge_method": method, "base_model": sb, "models": [{"model": m} for m in sms]}
    if params:
        cfg["parameters"] = params
    return cfg, sms


def test_disk_full_upload_is_resource_exhausted(daemons, tmp_path):
    prefix = _unshare_prefix()
    if prefix is None:
        pytest.skip("cannot mount a small tmpfs here (no mount namespace / user namespace)")
    d = daemons(start=False)
    state = d.dir / "state"
    state.mkdir()
    on_tmpfs(d, state, prefix, tmp_path)
    d.start()
    loc = "grpc+unix://" + d.address.removeprefix("unix://")
    fl = flight.FlightClient(loc)
    t = torch.zeros(1024, 1024)  # 4 MiB: twice the file system
    manifest = {
        "upload": "big",
        "tensors": [{"name": "w", "dtype": "float32", "shape": [1024, 1024]}],
    }
    desc = flight.FlightDescriptor.for_command(json.dumps(manifest).encode())
    data = t.numpy().tobytes()
    with pytest.raises((pa.ArrowException, OSError)) as e:
        writer, reader = fl.do_put(desc, SCHEMA)
        with writer:
            for off in range(0, len(data), 1 << 20):
                batch = pa.record_batch(
                    [
                        pa.array(["w"]), pa.array(["float32"]), pa.array(["1024,1024"]),
                        pa.array([off], pa.int64()),
                        pa.array([data[off : off + (1 << 20)]], pa.large_binary()),
                    ],
                    schema=SCHEMA,
                )  # fmt: skip
                writer.write_batch(batch)
            writer.done_writing()
            reader.read()
    msg = str(e.value)
    assert "resource exhausted" in msg.lower(), msg
    assert "is full" in msg
    fl.close()
    alive(d)


def test_metrics_on_all_interfaces_warns(daemons):
    d = daemons(metrics_listen="0.0.0.0:0")
    warnings = [
        json.loads(line)
        for line in d.log.read_text().splitlines()
        if line.startswith("{") and json.loads(line).get("level") == "WARN"
    ]
    assert any("no authentication" in w["msg"] for w in warnings), warnings
    quiet = daemons()  # the default 127.0.0.1: no warning
    assert "no authentication" not in quiet.log.read_text()


def test_config_path_that_is_a_directory(npsfused_bin, tmp_path):  # noqa: F811
    r = subprocess.run(
        [npsfused_bin, "--config", str(tmp_path), "--print-config"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2
    assert f"{tmp_path} is a directory" in r.stderr
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    r = subprocess.run(
        [npsfused_bin, "--config", str(fifo), "--print-config"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2 and "not a regular file" in r.stderr


# ------------------------------------------------------------ Medium 7


@pytest.mark.parametrize("which", ["shm_dir", "socket"])
def test_folders_another_user_prepared_are_refused(daemons, which):
    """Issue 16 Medium 7: a shm_dir or socket folder that other users may
    write (as one they pre-created would be) stops the daemon at start with
    a message naming it; a private one is accepted, and a shm_dir that was
    only readable by others is closed to them."""
    d = daemons(start=False)
    folder = Path(d.shm) if which == "shm_dir" else d.dir / "sock"
    folder.mkdir()
    folder.chmod(0o777)
    if which == "socket":
        i = d.args.index("--listen")
        d.args[i + 1] = f"unix://{folder}/d.sock"
        d.address = f"unix://{folder}/d.sock"
    with pytest.raises(RuntimeError, match="npsfused exited 1") as e:
        d.start()
    assert str(folder) in str(e.value) and "mode 0777" in str(e.value)
    folder.chmod(0o755)
    alive(d.start())
    if which == "shm_dir":
        assert folder.stat().st_mode & 0o077 == 0


# ------------------------------------------------------------ Low 14


def test_retention_removes_old_jobs_and_results_at_restart(daemons):
    """Issue 16 Low 14: finished jobs and their result files are removed by
    the retention policy (here retention_jobs = 1, applied at start), oldest
    first, and the metrics count what was removed."""
    d = daemons()
    c = d.client()
    cfg, _ = merge_config(d, "r", 2, seed=41)
    jobs = []
    for i in range(3):
        j = c.submit("merge", {"config": {**cfg, "parameters": {"lambda": 0.5 + i}}})
        assert j.wait(timeout=60)["state"] == "done"
        jobs.append(j)
    files = [Path(j.status()["result"]["path"]) for j in jobs]
    assert all(f.exists() for f in files)
    d.stop()
    d.args += ["--retention-jobs", "1"]
    d.start()
    c = d.client()
    listed = [j.id for j in c.jobs()]
    assert listed == [jobs[-1].id], listed
    assert [f.exists() for f in files] == [False, False, True]
    metrics = d.metrics()
    assert 'npsfused_retention_removed_total{what="jobs"} 2' in metrics, metrics[-2000:]


# ------------------------------------------------------------ High 2


@pytest.mark.parametrize("where", ["shm", "results"])
def test_result_larger_than_free_space_fails_the_job_not_the_daemon(daemons, tmp_path, where):
    """Issue 16 High 2: a merge result larger than the free space of
    shm_dir (or the results folder) fails that job with a clear error; the
    daemon lives (it died with SIGBUS writing through the map of a sparse
    file) and leaves no temporary file behind."""
    prefix = _unshare_prefix()
    if prefix is None:
        pytest.skip("cannot mount a small tmpfs here (no mount namespace / user namespace)")
    d = daemons(start=False)
    target = Path(d.shm) if where == "shm" else d.dir / "state" / "results"
    target.mkdir(mode=0o700, parents=True)
    on_tmpfs(d, target, prefix, tmp_path)
    d.start()
    c = d.client()
    cfg, _ = merge_config(d, "f", 2, seed=43, shapes={"w": (1024, 1024)})  # 4 MiB: twice the space
    j = c.submit("merge", {"config": cfg, "result": {"shm": where == "shm"}})
    st = j.wait(timeout=60)
    assert st["state"] == "failed", st
    assert "no space left on device" in st["error"], st["error"]
    alive(d)
    # The tmpfs lives in the daemon's mount namespace: look through its root.
    inside = Path(f"/proc/{d.proc.pid}/root{target}")
    left = [p.name for p in inside.rglob("*") if p.is_file()]
    assert not [n for n in left if n.startswith(".")], left


# ------------------------------------------------------------ Medium 4


def test_input_truncated_while_merged_fails_the_job_not_the_daemon(daemons):
    """Issue 16 Medium 4: an input truncated while the daemon merges it (a
    checkpoint saved over itself) fails that job with a message; the daemon
    (SIGBUS before) and the other jobs live on, and no partial output stays."""
    d = daemons()
    c = d.client()
    # Two tensors merged in name order: truncate once the first is done, so
    # that the file is certainly mapped and the second is read from it.
    shapes = {"a": (1024, 1024), "w": (4096, 2048)}
    cfg, sms = merge_config(d, "t", 3, seed=44, method="pcb", shapes=shapes, density=0.5)
    out = d.root / "tout"
    j = c.submit("merge", {"config": cfg, "out_dir": str(out)})
    deadline = time.monotonic() + 60
    while j.status()["progress"].get("done", 0) < 1:
        assert time.monotonic() < deadline and j.status()["state"] in ("queued", "running")
        time.sleep(0.005)
    os.truncate(Path(sms[2]) / "model.safetensors", 0)
    st = j.wait(timeout=120)
    assert st["state"] == "failed", st
    assert "changed while it was being read" in st["error"], st["error"]
    alive(d)
    assert not out.exists() and not list(d.root.glob(".tout.npsfuse-tmp-*"))
    ok = c.submit("merge", {"config": {**cfg, "merge_method": "task_arithmetic",
                                       "parameters": {},  # pcb's density: not task_arithmetic's
                                       "models": cfg["models"][:2]}})  # fmt: skip
    assert ok.wait(timeout=120)["state"] == "done"
