"""Issue 13's line count: the doors (pybind, daemon/jobs, the Python package) then and now.

Counts the lines of ``pybind/*.go``, ``daemon/jobs/*.go`` (tests excluded) and
``python/npsfuse/**/*.py`` (the generated ``_native`` excluded) at the commit
before issue 13's engine work and at HEAD, per file, and names for each file
added since the issue numbers of the commit that added it (its subject's
``#N``), so that the growth from features of later issues can be told from
growth of the doors themselves. ``client.py`` and ``nps.py`` became the
packages ``client/`` and ``nps/`` (issue 13); they are counted as one entry
each. Writes ``bench/results/door_lines.md``.

Usage: ``python bench/door_lines.py [--base REV]``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = "4523f26~1"  # the commit before "engine (#13): the floors between the kernels and the doors"


def git(*args: str) -> str:
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return r.stdout


def door_files(rev: str) -> list[str]:
    out = git("ls-tree", "-r", "--name-only", rev, "--",
              "pybind", "daemon/jobs", "python/npsfuse").split()
    go = [f for f in out if f.endswith(".go") and not f.endswith("_test.go")]
    py = [f for f in out if f.endswith(".py") and "/_native/" not in f]
    return go + py


def lines(rev: str, path: str) -> int:
    return len(git("show", f"{rev}:{path}").splitlines())


def entry(path: str) -> str:
    """The unit a file is counted in: the client and nps packages as one each."""
    for pkg in ("python/npsfuse/client", "python/npsfuse/nps"):
        if path == pkg + ".py" or path.startswith(pkg + "/"):
            return pkg + "(.py|/)"
    return path


def added_by(path: str) -> str:
    subj = git("log", "--diff-filter=A", "--format=%s", "--", path).strip().splitlines()
    if not subj:
        return "?"
    issues = sorted(set(re.findall(r"(?:#|issues? )(\d+)", subj[-1])), key=int)
    return ", ".join("#" + i for i in issues) or subj[-1][:60]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default=BASE)
    args = ap.parse_args()
    then: dict[str, int] = defaultdict(int)
    now: dict[str, int] = defaultdict(int)
    first: dict[str, str] = {}
    for f in door_files(args.base):
        then[entry(f)] += lines(args.base, f)
    for f in door_files("HEAD"):
        e = entry(f)
        now[e] += lines("HEAD", f)
        if e not in then and e not in first:
            first[e] = added_by(f)
    rows = []
    for e in sorted(set(then) | set(now)):
        rows.append((e, then.get(e, 0), now.get(e, 0), first.get(e, "")))
    kept_then = sum(then.values())
    kept_now = sum(now[e] for e in then if e in now)
    new_now = sum(now[e] for e in now if e not in then)
    head = git("rev-parse", "--short", "HEAD").strip()
    md = [f"# Lines of the doors (issue 13): {args.base} → {head}", "",
          "| | lines |", "|---|---|",
          f"| all door files at {args.base} | {kept_then} |",
          f"| the same files (or their packages) at HEAD | {kept_now} |",
          f"| files added since (features of later issues, see below) | {new_now} |",
          f"| all door files at HEAD | {kept_now + new_now} |", "",
          "| file | then | now | added by |", "|---|---|---|---|"]
    md += [f"| {e} | {a} | {b} | {c} |" for e, a, b, c in rows]
    md += ["", "pybind/*.go, daemon/jobs/*.go without tests, python/npsfuse/**/*.py without the "
           "generated _native; 'added by' is the issue numbers in the subject of the commit that "
           "added the file."]
    out = ROOT / "bench" / "results" / "door_lines.md"
    out.write_text("\n".join(md) + "\n")
    print(f"wrote {out}: then {kept_then}, same files now {kept_now}, new files {new_now}")


if __name__ == "__main__":
    main()
