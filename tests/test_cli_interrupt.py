"""Issue 18 item 12: an interrupted ``npsfuse.merge_checkpoints`` called from Python
(a script, a notebook cell) leaves no ``.OUT.npsfuse-tmp-N/`` folder beside OUT_DIR.

The command line is covered by ``test_hardening_cli``; here the Python function
is called directly, without the CLI's signal handling, and interrupted the
way Jupyter's "interrupt kernel" does (SIGINT → KeyboardInterrupt in the main
thread). The temporary folder must be gone when the exception reaches the
caller, not only when the process ends.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_hardening_cli import _merge_to_interrupt, _stalled_env

CHILD = r"""
import sys
from pathlib import Path
import npsfuse

cfg, out = sys.argv[1], Path(sys.argv[2])
print("started", flush=True)
try:
    npsfuse.merge_checkpoints(cfg, out, threads=1, quiet=True)
except KeyboardInterrupt:
    left = sorted(p.name for p in out.parent.glob(".out.npsfuse-tmp-*"))
    print("interrupted", "left=" + ",".join(left), "exists=" + str(out.exists()), flush=True)
    sys.exit(0)
print("finished", flush=True)
sys.exit(3)
"""


def test_interrupted_python_merge_leaves_nothing(tmp_path: Path) -> None:
    cfg, out = _merge_to_interrupt(tmp_path)
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cfg), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_stalled_env("1"),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.npsfuse-tmp-*")):  # the merge is writing
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "the merge never started"
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, (stdout, stderr)
    assert "interrupted left= exists=False" in stdout, (stdout, stderr)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.npsfuse-tmp-*"))


def _config(tmp: Path) -> tuple[Path, Path]:
    """A config for the tests that replace the Go call: never read."""
    cfg = tmp / "merge.yml"
    cfg.write_text("merge_method: ties\nbase_model: b\nmodels: [{model: m}]\n")
    return cfg, tmp / "out"


def test_interrupt_after_the_commit_returns_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Ctrl-C that lands after the Go merge renamed its output into place,
    but before the call returned, used to raise KeyboardInterrupt: the CLI
    then said "nothing was written" beside a complete folder (chaos case
    "npsfuse merge killed or interrupted", 1 in 84). The merge is complete,
    so the call returns it. The Go call is replaced by one that finishes
    after the interrupt, the order that race produces."""
    import _thread
    import json

    import npsfuse
    from npsfuse import _core

    cfg, out = _config(tmp_path)
    cancelled: list[int] = []

    def finished_late(job: int, text: str, base_dir: str, options: str) -> str:
        _thread.interrupt_main()  # Ctrl-C while the call is still running
        time.sleep(0.5)  # the caller has seen it and asked for a cancel
        assert job in cancelled
        return json.dumps({"out_dir": str(out)})

    monkeypatch.setattr(_core.go, "MergeCheckpoints", finished_late)
    monkeypatch.setattr(_core.go, "CancelJob", lambda job: cancelled.append(job) or False)
    try:
        assert npsfuse.merge_checkpoints(cfg, out, quiet=True) == out
    except KeyboardInterrupt:
        pytest.fail("the interrupt after the commit reached the caller")
    assert "interrupted after the merge had finished" in capsys.readouterr().err


def test_interrupt_before_the_commit_still_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other order: the Go call ends in its cancellation error, and the
    caller gets the KeyboardInterrupt, not that error."""
    import _thread

    import npsfuse
    from npsfuse import _core

    cfg, out = _config(tmp_path)

    def cancelled(job: int, text: str, base_dir: str, options: str) -> str:
        _thread.interrupt_main()
        time.sleep(0.5)
        raise _core.error("cancelled", "merge cancelled: context canceled")

    monkeypatch.setattr(_core.go, "MergeCheckpoints", cancelled)
    monkeypatch.setattr(_core.go, "CancelJob", lambda job: True)
    with pytest.raises(KeyboardInterrupt):
        npsfuse.merge_checkpoints(cfg, out, quiet=True)
