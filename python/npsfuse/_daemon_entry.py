"""The ``npsfused`` console script: runs the daemon binary bundled with the package.

``pip install .`` builds the Go daemon into ``npsfuse/_native/npsfused``; this
entry point replaces the Python process with it (``exec``), so signals
(SIGTERM, SIGINT) reach the daemon directly and its exit status is the
command's. ``npsfuse daemon [ARGS]`` does the same.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence


def binary() -> str:
    """Path of the bundled daemon binary (``$NPSFUSED_BIN`` overrides it)."""
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native", "npsfused")
    return os.environ.get("NPSFUSED_BIN") or bundled


def main(argv: Sequence[str] | None = None) -> int:
    """Exec the daemon with ``argv`` (default: this process's arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    exe = binary()
    if os.path.isfile(exe) and not os.access(exe, os.X_OK):
        with contextlib.suppress(OSError):  # an archive that dropped the executable bit
            os.chmod(exe, 0o755)
    if not os.access(exe, os.X_OK):
        print(
            f"npsfused: the daemon binary {exe} is missing: reinstall npsfuse with "
            "`pip install .` (needs Go), or run `make build` in a source checkout",
            file=sys.stderr,
        )
        return 127
    os.execv(exe, [exe, *args])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
