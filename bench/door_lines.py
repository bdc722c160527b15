"""Issue 13's line count: the doors (pybind, daemon/jobs, the Python package) then and now.

Counts the lines of ``pybind/*.go``, ``daemon/jobs/*.go`` (tests excluded) and
``python/npsfuse/**/*.py`` (the generated ``_native`` excluded) at the commit
before issue 13's engine work and at HEAD, per file, and names for each file
added since the issue numbers of the commit that added it (its subject's
``#N``), so that the growth from features of later issues can be told from
growth of the doors themselves. ``client.py`` and ``nps.py`` became the
packages ``client/`` and ``nps/`` (issue 13); they are counted as one entry
each. Every figure is given twice: all lines, and code lines (blank lines,
comments and docstrings left out, as cloc's "code" column counts), so that
documentation written since does not count as code. Writes
``bench/results/door_lines.md``.

Usage: ``python bench/door_lines.py [--base REV]``.
"""

from __future__ import annotations

import argparse
import ast
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
    out = git(
        "ls-tree", "-r", "--name-only", rev, "--", "pybind", "daemon/jobs", "python/npsfuse"
    ).split()
    go = [f for f in out if f.endswith(".go") and not f.endswith("_test.go")]
    py = [f for f in out if f.endswith(".py") and "/_native/" not in f]
    return go + py


def code_lines(path: str, text: str) -> int:
    """Lines of text that are code: not blank, not a comment, not a docstring."""
    skip: set[int] = set()
    if path.endswith(".py"):
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                first = node.body[0] if node.body else None
                if (
                    isinstance(first, ast.Expr)
                    and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)
                ):
                    skip.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    comment = "#" if path.endswith(".py") else "//"
    n, in_block = 0, False
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if in_block:
            in_block = "*/" not in s
            continue
        if not s or s.startswith(comment) or i in skip:
            continue
        if comment == "//" and s.startswith("/*"):
            in_block = "*/" not in s
            continue
        n += 1
    return n


def count(rev: str, path: str) -> tuple[int, int]:
    """(all lines, code lines) of path at rev."""
    text = git("show", f"{rev}:{path}")
    return len(text.splitlines()), code_lines(path, text)


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
    then: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    now: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    first: dict[str, str] = {}
    for rev, into in ((args.base, then), ("HEAD", now)):
        for f in door_files(rev):
            total, code = count(rev, f)
            into[entry(f)][0] += total
            into[entry(f)][1] += code
    for f in door_files("HEAD"):
        e = entry(f)
        if e not in then and e not in first:
            first[e] = added_by(f)

    def tally(entries: list[str], side: dict[str, list[int]]) -> str:
        return " | ".join(str(sum(side[e][k] for e in entries)) for k in (0, 1))

    kept = [e for e in then if e in now]
    new = sorted(e for e in now if e not in then)
    by13 = [e for e in new if "#13" in first[e]]
    head = git("rev-parse", "--short", "HEAD").strip()
    md = [
        f"# Lines of the doors (issue 13): {args.base} → {head}",
        "",
        "| | lines | code lines |",
        "|---|---|---|",
        f"| all door files at {args.base} | {tally(list(then), then)} |",
        f"| the same files (or their packages) at HEAD | {tally(kept, now)} |",
        f"| the same files and the files issue 13 added | {tally(kept + by13, now)} |",
        f"| files added since (features of later issues, see below) | {tally(new, now)} |",
        f"| all door files at HEAD | {tally(list(now), now)} |",
        "",
        "| file | lines then | lines now | code then | code now | added by |",
        "|---|---|---|---|---|---|",
    ]
    for e in sorted(set(then) | set(now)):
        a, b = then.get(e, [0, 0]), now.get(e, [0, 0])
        md.append(f"| {e} | {a[0]} | {b[0]} | {a[1]} | {b[1]} | {first.get(e, '')} |")
    md += [
        "",
        "pybind/*.go, daemon/jobs/*.go without tests, python/npsfuse/**/*.py without the "
        "generated _native; code lines leave out blank lines, comments and docstrings; "
        "'added by' is the issue numbers in the subject of the commit that added the file.",
    ]
    out = ROOT / "bench" / "results" / "door_lines.md"
    out.write_text("\n".join(md) + "\n")
    print(f"wrote {out}:", *md[4:9], sep="\n")


if __name__ == "__main__":
    main()
