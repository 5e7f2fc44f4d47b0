"""The trained sentiment head, shipped in the package (590 KB): ``modelgate build-sentiment``
puts it on the packaged all-MiniLM-L6-v2 encoder and saves the served model folder in seconds,
with no corpus and no training. ``head.safetensors`` and ``report.json`` here are what
``modelgate train-sentiment`` wrote (seed 0); retraining reproduces them byte for byte."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelgate.modelfiles import staged
from modelgate.sentiment.corpus import LABELS, SentimentError

HERE = Path(__file__).parent

HEAD_FILE = HERE / "head.safetensors"
"""The shipped head's weights."""

REPORT_FILE = HERE / "report.json"
"""How the shipped head was trained, and its held-out scores."""

HEAD_KEYS = (
    "bert.pooler.dense.weight",
    "bert.pooler.dense.bias",
    "classifier.weight",
    "classifier.bias",
)
"""The parameters training changes; every other weight is the encoder's, untouched."""


def head_tensors(model: Any) -> dict[str, Any]:
    state = model.state_dict()
    return {key: state[key].detach().clone().contiguous() for key in HEAD_KEYS}


def save_head(model: Any, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(head_tensors(model), str(path))


def build(out: Path, *, encoder: Path | None = None, head: Path = HEAD_FILE) -> Path:
    """The served model folder: the encoder with the trained head, saved with its tokenizer
    and a copy of the training report."""
    from safetensors.torch import load_file

    from modelgate.sentiment.train import default_encoder, load_classifier, save_folder

    if out.exists():
        raise SentimentError(f"{out}: exists; remove it to build again")
    encoder = encoder or default_encoder()
    if not head.is_file():
        raise SentimentError(f"{head}: no such head file")
    weights = load_file(str(head))
    if sorted(weights) != sorted(HEAD_KEYS):
        raise SentimentError(f"{head}: not a sentiment head (keys {sorted(weights)})")
    model, tokenizer = load_classifier(encoder, seed=0)
    missing = model.load_state_dict(weights, strict=False)
    assert not missing.unexpected_keys, missing
    with staged(out) as staging:
        save_folder(model, tokenizer, staging)
        report = head.with_name("report.json")
        if report.is_file():
            (staging / "report.json").write_text(report.read_text())
    return out


__all__ = ["HEAD_FILE", "LABELS", "REPORT_FILE", "build", "save_head"]
