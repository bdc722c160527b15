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

from test_hardening_cli import _env, _slow_merge

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
    cfg, out = _slow_merge(tmp_path)
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(cfg), str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.npsfuse-tmp-*")):  # the merge is writing
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "the merge never started"
        time.sleep(0.02)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, (stdout, stderr)
    assert "interrupted left= exists=False" in stdout, (stdout, stderr)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.npsfuse-tmp-*"))
