"""Fault injection against the real ``npsfused`` and ``npsfuse merge`` (issue 16).

``make chaos`` runs random cases for a time budget (``CHAOS_SECONDS``,
default 120; CI uses a short one) from a seed (``CHAOS_SEED``) and checks the
same invariants after every case:

- the daemon answers, and after a restart stays up (no crash loop);
- no job is lost: every job submitted is still in the store, in a final
  state or a ready session;
- nothing outside the data roots is touched (a sentinel folder's contents);
- no output folder is replaced without ``force`` (a folder with the user's
  file in it);
- no temporary file is left once the daemon has started again and its jobs
  ended (``.*.npsfuse-tmp-*`` folders, ``.*.tmp*`` files, in the data root and
  the shared-memory folder).

Cases: kill -9 at a random moment of an ``out_dir`` merge (the result must
then equal an uninterrupted run's, bit for bit), of a merge into a folder the
user did not allow to be replaced, and of an NPS search or evolve session
between calls (the trajectory must equal an uninterrupted run's); a result
larger than the free space of ``shm_dir`` (a small tmpfs, where one can be
mounted); inputs truncated or replaced by other tensors before the job runs;
a FIFO named ``model.safetensors``; a client killed in the middle of an
upload; ``npsfuse merge`` killed with SIGKILL or interrupted with SIGINT at a
random moment.

Prints one line per case and a table of counts at the end; exits 1 when an
invariant failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from npsfuse.merging import USES_DENSITY
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_daemon import ROOT, Daemon  # noqa: E402
from test_hardening_daemon import _unshare_prefix, on_tmpfs  # noqa: E402

SHAPES = {"embed.weight": (2048, 1024), "layer.0.weight": (1024, 1024), "layer.0.bias": (1024,)}
METHODS = ("task_arithmetic", "ties", "dare_ties")


class InvariantError(AssertionError):
    """An invariant did not hold after a case."""


def digest(folder: Path) -> str:
    """A hash of every file's path and bytes under folder."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def load_folder(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def cli(*args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "npsfuse.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )  # fmt: skip


class Chaos:
    """One daemon, a data root with a model family, and the invariants."""

    def __init__(self, binary: str, rng: random.Random) -> None:
        self.binary = binary
        self.rng = rng
        self.d = Daemon(binary, workers=2)
        root = self.d.root
        g = torch.Generator().manual_seed(1)
        base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
        self.models = []
        for i in range(4):
            sd = (
                base
                if i == 0
                else {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.items()}
            )
            folder = root / f"m{i}"
            folder.mkdir()
            save_file(sd, str(folder / "model.safetensors"))
            (folder / "config.json").write_text('{"model_type": "tiny"}')
            self.models.append(folder)
        # Outside every data root: must never change.
        self.outside = self.d.dir / "outside"
        self.outside.mkdir()
        (self.outside / "notes.txt").write_text("the user's own file")
        self.outside_digest = digest(self.outside)
        # Inside the root, a folder no job may replace (never given force).
        self.keep = root / "keep"
        self.keep.mkdir()
        (self.keep / "precious.txt").write_text("mine")
        self.keep_digest = digest(self.keep)
        self.jobs: set[int] = set()
        self.refs: dict[str, dict[str, torch.Tensor]] = {}
        self.sessions: dict[str, Any] = {}
        self.n = 0
        self.d.start()
        self.c = self.d.client()

    # ------------------------------------------------------------ helpers

    def config(self, method: str, out_models: int = 3) -> dict[str, Any]:
        params: dict[str, float] = {"weight": 0.7}
        if method in USES_DENSITY:  # the others refuse it
            params["density"] = 0.5
        return {
            "merge_method": method,
            "base_model": str(self.models[0]),
            "models": [{"model": str(m), "parameters": dict(params)}
                       for m in self.models[1 : 1 + out_models]],
            "seed": 3,
        }  # fmt: skip

    def reference(self, method: str) -> dict[str, torch.Tensor]:
        """The merge's result from an uninterrupted CLI run."""
        if method not in self.refs:
            cfg = self.d.dir / f"ref-{method}.yml"
            cfg.write_text(yaml.safe_dump(self.config(method)))
            out = self.d.dir / f"ref-{method}"
            p = cli("merge", str(cfg), str(out), "--quiet")
            _, err = p.communicate(timeout=300)
            if p.returncode != 0:
                raise RuntimeError(f"reference merge failed: {err}")
            self.refs[method] = load_folder(out)
        return self.refs[method]

    def restart(self, kill: bool = True) -> None:
        if kill:
            self.d.kill9()
        else:
            self.d.stop()
        self.d.start()
        time.sleep(0.3)
        if self.d.proc is None or self.d.proc.poll() is not None:
            raise InvariantError("the daemon died right after its restart (crash loop)")
        self.c = self.d.client()

    def submit(self, typ: str, spec: dict[str, Any]) -> Any:
        j = self.c.submit(typ, spec)
        self.jobs.add(j.id)
        return j

    def fresh(self, name: str) -> Path:
        self.n += 1
        return self.d.root / f"{name}-{self.n}"

    # ------------------------------------------------------------ invariants

    def check(self) -> list[str]:
        """The invariants; returns their names (raises InvariantError)."""
        if self.d.proc is None or self.d.proc.poll() is not None:
            raise InvariantError(f"the daemon is not running:\n{self.d.log.read_text()[-3000:]}")
        info = self.c.info()
        if info["pid"] != self.d.proc.pid:
            raise InvariantError("another process answers")
        listed = {j.id: j for j in self.c.jobs()}
        lost = self.jobs - set(listed)
        if lost:
            raise InvariantError(f"jobs lost: {sorted(lost)}")
        deadline = time.monotonic() + 120
        for jid in self.jobs:  # every job ends (or is a ready session)
            while True:
                st = self.c.job(jid).status()
                if st["state"] in ("done", "failed", "cancelled") or st.get("ready"):
                    break
                if time.monotonic() > deadline:
                    raise InvariantError(f"job {jid} still {st['state']} after 120 s")
                time.sleep(0.05)
        if digest(self.outside) != self.outside_digest:
            raise InvariantError("a folder outside the data roots changed")
        if digest(self.keep) != self.keep_digest:
            raise InvariantError("a folder was replaced without force")
        state = self.d.dir / "state"
        left = [
            p
            for base in (self.d.root, Path(self.d.shm), state)
            if base.exists()
            for p in base.rglob(".*")
            if "npsfuse-tmp" in p.name or ".tmp" in p.name
        ]
        if left:
            raise InvariantError(f"temporary files left: {[str(p) for p in left]}")
        return ["alive", "no job lost", "jobs end", "outside untouched", "no replace without force",
                "no temp files"]  # fmt: skip

    # ------------------------------------------------------------ cases

    def kill9_merge(self) -> str:
        method = self.rng.choice(METHODS)
        out = self.fresh("out")
        j = self.submit("merge", {"config": self.config(method), "out_dir": str(out)})
        time.sleep(self.rng.uniform(0, 0.6))
        self.restart()
        st = self.c.job(j.id).wait(timeout=300)
        if st["state"] != "done":
            raise InvariantError(f"merge after kill -9: {st['state']} {st.get('error')}")
        if not same(load_folder(out), self.reference(method)):
            raise InvariantError(
                "the merge resumed after kill -9 differs from an uninterrupted one"
            )
        return method

    def kill9_merge_no_force(self) -> str:
        j = self.submit("merge", {"config": self.config("ties"), "out_dir": str(self.keep)})
        time.sleep(self.rng.uniform(0, 0.2))
        self.restart()
        st = self.c.job(j.id).wait(timeout=300)
        if st["state"] != "failed" or "not empty" not in (st.get("error") or ""):
            raise InvariantError(f"merge into a non-empty folder without force: {st}")
        return "refused"

    def _session(self, kind: str, kill_at: int | None) -> tuple[list[Any], Any]:
        base, ft = str(self.models[0]), str(self.models[1])
        if kind == "nps_search":
            s = self.c.nps_search(base, ft, subspaces=3, popsize=4, generations=5, seed=7)
        else:
            s = self.c.evolve([ft, str(self.models[2]), str(self.models[3])], generations=4, seed=7)
        self.jobs.add(s.id)
        asked: list[Any] = []
        asks = 0
        while True:
            cands = s.ask(timeout=120)
            if s.done:
                break
            xs = [c.params for c in cands]
            if asks == kill_at:
                # Killed between ask and tell: after the restart the session
                # asks the same candidates again.
                self.restart()
                s = self.c.job(s.id)
                again = [c.params for c in s.ask(timeout=120)]
                if again != xs:
                    raise InvariantError(f"{kind}: after kill -9 it asks {again}, before {xs}")
            asks += 1
            asked.append(xs)
            s.tell([-sum((v - 1.3) ** 2 for v in x) for x in xs])
        best = s.best()
        s.finish()
        return asked, json.dumps(best, sort_keys=True)

    def kill9_session(self) -> str:
        kind = self.rng.choice(["nps_search", "evolve"])
        if kind not in self.sessions:
            self.sessions[kind] = self._session(kind, None)
        got = self._session(kind, self.rng.randrange(0, 3))
        if got != self.sessions[kind]:
            raise InvariantError(
                f"{kind}: the trajectory after kill -9 differs from an uninterrupted one"
            )
        return kind

    def disk_full(self) -> str:
        prefix = _unshare_prefix()
        if prefix is None:
            return "skipped: no tmpfs can be mounted here"
        self.d.stop()  # the same daemon (store, roots), restarted on a 2 MiB shm_dir
        on_tmpfs(self.d, Path(self.d.shm), prefix, self.d.dir)
        try:
            self.d.start()
            self.c = self.d.client()
            j = self.submit(
                "merge", {"config": self.config("task_arithmetic"), "result": {"shm": True}}
            )
            st = j.wait(timeout=120)
            if st["state"] != "failed" or "no space left" not in (st.get("error") or ""):
                raise InvariantError(f"a result larger than shm_dir: {st}")
            inside = Path(f"/proc/{self.d.proc.pid}/root{self.d.shm}")
            left = [p.name for p in inside.rglob(".*")]
            if left:
                raise InvariantError(f"temporary files in the full shm_dir: {left}")
        finally:
            self.d.stop()
            self.d.binary = self.binary
            self.d.start()
            self.c = self.d.client()
        return "enospc"

    def bad_input(self) -> str:
        what = self.rng.choice(["truncated", "replaced", "fifo"])
        victim = self.fresh("bad")
        shutil.copytree(self.models[2], victim)
        f = victim / "model.safetensors"
        if what == "truncated":
            size = f.stat().st_size
            with open(f, "r+b") as fh:
                fh.truncate(self.rng.randrange(0, size))
            want = str(f)
        elif what == "replaced":
            save_file({"other.weight": torch.zeros(3, 3)}, str(f))
            want = "missing"
        else:
            f.unlink()
            os.mkfifo(f)
            want = "not a regular file"
        cfg = self.config("ties")
        cfg["models"][1]["model"] = str(victim)
        try:
            j = self.submit("merge", {"config": cfg, "out_dir": str(self.fresh("out"))})
            st = j.wait(timeout=120)
            msg = st.get("error") or ""
            if st["state"] != "failed" or want not in msg:
                raise InvariantError(f"{what} input: {st['state']}: {msg!r} does not say {want!r}")
        except ValueError as e:  # refused at submit
            if want not in str(e) and str(victim) not in str(e):
                raise InvariantError(f"{what} input refused without naming it: {e}") from e
        # The workers are free: a good merge still runs.
        good = self.submit(
            "merge", {"config": self.config("task_arithmetic"), "result": {"shm": True}}
        )
        if good.wait(timeout=120)["state"] != "done":
            raise InvariantError(f"a good merge after a {what} input did not finish")
        good.delete()
        self.jobs.discard(good.id)
        return what

    def vanished_client(self) -> str:
        code = f"""
import json, sys, pyarrow as pa
from pyarrow import flight
from npsfuse.client import SCHEMA
fl = flight.FlightClient("grpc+unix://{self.d.address.removeprefix("unix://")}")
n = 8 << 20
t = {{"name": "w", "dtype": "float32", "shape": [n // 4]}}
manifest = {{"upload": "vanish{self.n}", "tensors": [t]}}
w, _ = fl.do_put(flight.FlightDescriptor.for_command(json.dumps(manifest).encode()), SCHEMA)
piece = bytes(1 << 20)
for off in range(0, n, 1 << 20):
    w.write_batch(pa.record_batch([pa.array(["w"]), pa.array(["float32"]), pa.array([str(n // 4)]),
        pa.array([off], pa.int64()), pa.array([piece], pa.large_binary())], schema=SCHEMA))
    print(off, flush=True)
"""
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        stop_after = self.rng.randrange(1, 6)
        for _ in range(stop_after):
            if not p.stdout.readline():
                break
        p.kill()
        p.wait()
        time.sleep(0.5)
        try:
            info = self.c._call("upload_info", {"name": f"vanish{self.n}"})
        except LookupError:
            return f"after {stop_after} MiB"
        raise InvariantError(f"a half-sent upload exists: {info}")

    def after_sigint(self, code: int, out: Path) -> None:
        """What a SIGINT may leave: a finished merge or nothing at all.

        Exit 0 (the signal came after the merge) leaves the full result and
        130 (interrupted) leaves no folder. A SIGINT that lands while the
        interpreter starts or shuts down, outside any Python handler, kills
        the process (-2); the folder is then absent or the full result.
        """
        if code not in (0, 130, -signal.SIGINT):
            raise InvariantError(f"npsfuse merge after SIGINT exited {code}")
        if code == 130 and out.exists():
            raise InvariantError(f"an interrupted merge left {out}")
        if code == 0 or out.exists():
            if not same(load_folder(out), self.reference("ties")):
                raise InvariantError(f"merge exited {code} after SIGINT; its result differs")

    def cli_killed(self) -> str:
        sig = self.rng.choice([signal.SIGKILL, signal.SIGINT])
        out = self.fresh("cli")
        cfg = self.d.dir / f"cli-{self.n}.yml"
        cfg.write_text(yaml.safe_dump(self.config("ties")))
        p = cli("merge", str(cfg), str(out), "--quiet")
        # The whole run takes about 0.4 s: most signals land while it works.
        time.sleep(self.rng.uniform(0.02, 0.5))
        p.send_signal(sig)
        p.communicate(timeout=120)
        if sig == signal.SIGINT:
            self.after_sigint(p.returncode, out)
        code = p.returncode
        # The next run into the same folder succeeds and removes what a
        # killed run left.
        q = cli("merge", str(cfg), str(out), "--quiet", "--force")
        _, err = q.communicate(timeout=300)
        if q.returncode != 0:
            raise InvariantError(f"the next merge failed: {err}")
        if not same(load_folder(out), self.reference("ties")):
            raise InvariantError("the next CLI merge differs from the reference")
        return f"{sig.name}, exit {code}"

    def cleanup(self) -> None:
        self.d.cleanup()


CASES: dict[str, Callable[[Chaos], str]] = {
    "kill -9 during an out_dir merge": Chaos.kill9_merge,
    "kill -9 during a merge into a folder without force": Chaos.kill9_merge_no_force,
    "kill -9 during a session": Chaos.kill9_session,
    "result larger than shm_dir": Chaos.disk_full,
    "truncated / replaced / FIFO input": Chaos.bad_input,
    "client killed mid-upload": Chaos.vanished_client,
    "npsfuse merge killed or interrupted": Chaos.cli_killed,
}


def main() -> int:
    budget = float(os.environ.get("CHAOS_SECONDS", "120"))
    seed = int(os.environ.get("CHAOS_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    binary = daemon_binary()
    print(f"chaos: seed {seed}, budget {budget:.0f} s, npsfused {binary}", flush=True)
    ch = Chaos(binary, rng)
    counts: Counter[str] = Counter()
    checks = 0
    failed: list[str] = []
    start = time.monotonic()
    names = list(CASES)
    i = 0
    try:
        while time.monotonic() - start < budget or i < len(names):
            # Every kind once first, then at random.
            name = names[i] if i < len(names) else rng.choice(names)
            i += 1
            t0 = time.monotonic()
            try:
                detail = CASES[name](ch)
                inv = ch.check()
                checks += len(inv)
                counts[name] += 1
                print(
                    f"ok    {name} ({detail}) {time.monotonic() - t0:.1f} s; "
                    f"invariants: {', '.join(inv)}",
                    flush=True,
                )
            except Exception as e:  # noqa: BLE001 - every failure is reported
                failed.append(f"{name}: {e}")
                counts[name] += 1
                print(f"FAIL  {name}: {e}", flush=True)
                traceback.print_exc()
                ch.cleanup()
                ch = Chaos(binary, rng)
    finally:
        ch.cleanup()
    print("\n| case | runs |\n|---|---|")
    for name in names:
        print(f"| {name} | {counts[name]} |")
    print(
        f"\n{sum(counts.values())} cases, {checks} invariant checks passed, "
        f"{len(failed)} failures (seed {seed})"
    )
    for f in failed:
        print("  -", f)
    return 1 if failed else 0


def daemon_binary() -> str:
    """$NPSFUSED_BIN, the installed package's npsfused, or a fresh build."""
    if os.environ.get("NPSFUSED_BIN"):
        return os.environ["NPSFUSED_BIN"]
    from npsfuse._daemon_entry import binary

    if os.access(binary(), os.X_OK):
        return binary()
    out = Path(tempfile.mkdtemp(prefix="chaos-bin-")) / "npsfused"
    subprocess.run(["go", "build", "-o", str(out), "./daemon/cmd/npsfused"], cwd=ROOT, check=True)
    return str(out)


if __name__ == "__main__":
    sys.exit(main())
