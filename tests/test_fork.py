"""npsfuse in forked processes (issue 16, Medium 8): the Go runtime does not
survive fork(). A process forked after ``import npsfuse`` but before any call
works (the runtime starts at the first call); one forked after the parent
called npsfuse gets a clear error naming the start methods that work,
instead of hanging forever in its first merge."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import textwrap
from pathlib import Path


def _run(tmp: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Run code as a script file (the spawn start method re-imports it)."""
    script = tmp / "forked.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )


CHILD = """
import multiprocessing as mp, torch, npsfuse

def family():
    g = torch.Generator().manual_seed(0)
    # Small tensors: torch's own OpenMP pool hangs in a forked child for large ones.
    base = {f"w{i}": torch.randn(100, 100, generator=g) for i in range(4)}
    return base, [{k: v + 0.1 * j for k, v in base.items()} for j in (1, 2)]

def child(q):
    base, fts = family()
    try:
        r = npsfuse.merge(base, fts, "ties", density=0.5)
        q.put(("ok", float(sum(t.sum() for t in r.values()))))
    except Exception as e:
        q.put((type(e).__name__, str(e)))

def in_child(method):
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    out = q.get(timeout=60)
    p.join(30)
    return out
"""


def test_fork_after_import_before_any_call_works(tmp_path: Path) -> None:
    r = _run(tmp_path, CHILD + """
if __name__ == "__main__":
    status, value = in_child("fork")
    assert status == "ok", (status, value)
    base, fts = family()
    want = float(sum(t.sum() for t in npsfuse.merge(base, fts, "ties", density=0.5).values()))
    assert value == want, (value, want)
    print("ok")
""")  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_fork_after_a_call_raises_instead_of_hanging(tmp_path: Path) -> None:
    r = _run(tmp_path, CHILD + """
if __name__ == "__main__":
    base, fts = family()
    npsfuse.merge(base, fts, "ties", density=0.5)   # the Go runtime now runs here
    status, msg = in_child("fork")
    assert status == "RuntimeError", (status, msg)
    assert "forked" in msg and "'spawn'" in msg and "forkserver" in msg, msg
    status, _ = in_child("spawn")                    # what the message advises works
    assert status == "ok"
    print("ok")
""")  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_start_methods_exist() -> None:
    assert {"fork", "spawn", "forkserver"} <= set(mp.get_all_start_methods())
