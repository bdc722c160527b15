"""The exclude rule of an evolution is one rule in every door: regular
expressions searched anywhere in a tensor's name. ``npsfuse.Evolver``
applies Python's ``re.search``; the daemon's evolve sessions apply the
engine's ``gocore/evolve.Exclude`` (Go's RE2). Both are checked against the
same cases, ``gocore/evolve/testdata/exclude.json`` (the Go side in
``gocore/evolve/exclude_test.go``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

CASES = Path(__file__).resolve().parent.parent / "gocore" / "evolve" / "testdata" / "exclude.json"


def _load() -> dict[str, Any]:
    return json.loads(CASES.read_text())


@pytest.mark.parametrize("case", _load()["cases"], ids=lambda c: f"{c['patterns']}-{c['name']!r}")
def test_python_rule_gives_the_engines_answer(case: dict[str, Any]) -> None:
    got = any(re.search(p, case["name"]) for p in case["patterns"])
    assert got == case["excluded"]


@pytest.mark.parametrize("pattern", _load()["bad"])
def test_patterns_the_engine_refuses_are_refused_in_python_too(pattern: str) -> None:
    with pytest.raises(re.error):
        re.compile(pattern)
