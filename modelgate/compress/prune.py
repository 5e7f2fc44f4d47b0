"""``modelgate prune``: structured pruning that shrinks the compute, not just zeroes weights.

Two cuts, each chosen by an importance score measured on calibration texts from the corpus:

- **Whole layers.** A layer's importance is how far the model's output moves when that layer
  alone is skipped: 1 - cosine of the pooled sentence vectors (embeddings), or the KL divergence
  of the class distributions (classifiers). The least important layers go.
- **FFN channels.** A channel's importance is the mean magnitude of its activation over the
  calibration tokens times the norm of its output weights: what it adds to the residual stream.
  Every kept layer keeps its most important ``--ffn-keep`` share, so one ``intermediate_size``
  describes all layers.

The result is a standard config (``num_hidden_layers``, ``intermediate_size``): from_pretrained
loads it and a worker serves it with no custom code. Attention heads are not pruned:
transformers 5 dropped ``prune_heads`` and the ``pruned_heads`` config, and BERT derives the
head size from ``hidden_size / num_attention_heads``, so a model with fewer heads per layer
would need code of its own to load. Pruning loses quality; ``modelgate distill --student OUT``
recovers much of it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelgate.compress.data import CompressError, Corpus
from modelgate.compress.models import (
    ModelRef,
    check_layers,
    check_out,
    keep_layers,
    layers_of,
    load,
    parameters,
    pooled,
    publish,
)


@dataclass(frozen=True)
class Plan:
    """What to cut: ``drop_layers`` least important layers (or keep exactly ``keep``), and keep
    ``ffn_keep`` of each kept layer's FFN channels."""

    drop_layers: int = 0
    keep: list[int] | None = None
    ffn_keep: float = 1.0
    calibration: int = 256
    max_length: int = 128
    batch_size: int = 32

    def check(self, layers: int) -> None:
        if self.keep is None and not 0 <= self.drop_layers < layers:
            raise CompressError(f"--drop-layers {self.drop_layers}: from 0 to {layers - 1}")
        if not 0 < self.ffn_keep <= 1:
            raise CompressError(f"--ffn-keep {self.ffn_keep}: a share above 0, at most 1")
        if self.calibration < 1:
            raise CompressError("--calibration must be 1 or more")
        if self.keep is None and self.drop_layers == 0 and self.ffn_keep == 1:
            raise CompressError("nothing to prune: give --drop-layers, --layers or --ffn-keep")


def _batches(tokenizer: Any, texts: list[str], plan: Plan) -> list[dict[str, Any]]:
    return [
        tokenizer(
            texts[i : i + plan.batch_size],
            padding=True,
            truncation=True,
            max_length=plan.max_length,
            return_tensors="pt",
        )
        for i in range(0, len(texts), plan.batch_size)
    ]


def _outputs(model: Any, batches: list[dict[str, Any]], ref: ModelRef) -> Any:
    import torch

    with torch.inference_mode():
        if ref.is_classifier:
            return torch.cat([model(**b).logits for b in batches])
        return torch.cat([pooled(model, b, ref.pooling) for b in batches])


def distance(got: Any, want: Any, classifier: bool) -> float:
    """How far outputs moved: mean 1 - cosine (vectors), mean KL(want || got) (logits)."""
    import torch.nn.functional as F

    if classifier:
        return float(
            F.kl_div(
                F.log_softmax(got, -1),
                F.log_softmax(want, -1),
                log_target=True,
                reduction="batchmean",
            )
        )
    return float((1 - F.cosine_similarity(got, want, dim=-1)).mean())


def layer_importance(model: Any, batches: list[dict[str, Any]], ref: ModelRef) -> list[float]:
    """Per layer: the distance of the outputs with that layer alone skipped."""
    want = _outputs(model, batches, ref)
    total = len(layers_of(model))
    scores = []
    for i in range(total):
        without = keep_layers(model, [k for k in range(total) if k != i])
        scores.append(distance(_outputs(without, batches, ref), want, ref.is_classifier))
    return scores


def channel_importance(model: Any, batches: list[dict[str, Any]]) -> list[Any]:
    """Per layer, per FFN channel: mean |activation| over real tokens x the output weights'
    column norm."""
    import torch

    layers = layers_of(model)
    sums = [torch.zeros(layer.intermediate.dense.out_features) for layer in layers]
    tokens = 0
    current: dict[str, Any] = {}

    def hook(index: int) -> Any:
        def record(_: Any, __: Any, output: Any) -> None:
            mask = current["mask"].unsqueeze(-1).to(output.dtype)
            sums[index] += (output.abs() * mask).sum(dim=(0, 1))

        return record

    handles = [layer.intermediate.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            for batch in batches:
                current["mask"] = batch["attention_mask"]
                tokens += int(batch["attention_mask"].sum())
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return [
        (total / max(1, tokens)) * layer.output.dense.weight.norm(dim=0)
        for total, layer in zip(sums, layers, strict=True)
    ]


def shrink_ffn(model: Any, scores: list[Any], keep: int) -> list[list[int]]:
    """Keep the ``keep`` best channels of each layer's FFN, in their order; returns them."""
    import torch

    kept = []
    for layer, score in zip(layers_of(model), scores, strict=True):
        index = score.topk(keep).indices.sort().values
        up, down = layer.intermediate.dense, layer.output.dense
        new_up = torch.nn.Linear(
            up.in_features, keep, dtype=up.weight.dtype, device=up.weight.device
        )
        new_down = torch.nn.Linear(
            keep, down.out_features, dtype=down.weight.dtype, device=down.weight.device
        )
        with torch.no_grad():
            new_up.weight.copy_(up.weight[index])
            new_up.bias.copy_(up.bias[index])
            new_down.weight.copy_(down.weight[:, index])
            new_down.bias.copy_(down.bias)
        layer.intermediate.dense, layer.output.dense = new_up, new_down
        kept.append(index.tolist())
    model.config.intermediate_size = keep
    return kept


def prune(
    ref: ModelRef,
    corpus: Corpus,
    out: Path,
    plan: Plan,
    *,
    say: Any = print,
    evaluate_texts: int = 1000,
) -> dict[str, Any]:
    """Prune by ``plan`` and save into ``out`` with report.json and a models.yaml entry."""
    check_out(out)
    began = time.monotonic()
    model, tokenizer = load(ref)
    total, params_before = len(layers_of(model)), parameters(model)
    plan.check(total)
    if plan.keep is not None:
        check_layers(plan.keep, total)
    texts = corpus.sample(plan.calibration, seed=0)
    batches = _batches(tokenizer, texts, plan)
    say(
        f"pruning {ref.name} ({parameters(model) / 1e6:.1f}M parameters, {total} layers) "
        f"on {len(texts)} calibration texts"
    )
    report: dict[str, Any] = {"model": ref.describe(), "corpus": corpus.describe()}
    if plan.keep is not None or plan.drop_layers:
        scores = layer_importance(model, batches, ref)
        report["layer_importance"] = [round(s, 6) for s in scores]
        if plan.keep is not None:
            keep = sorted(plan.keep)
        else:
            drop = sorted(range(total), key=scores.__getitem__)[: plan.drop_layers]
            keep = [i for i in range(total) if i not in drop]
        say(
            "layer importance (output change without it): "
            + ", ".join(f"{i}: {s:.4f}" for i, s in enumerate(scores))
            + f"; keeping {keep}"
        )
        model = keep_layers(model, keep)
        report["kept_layers"] = keep
    before = model.config.intermediate_size
    if plan.ffn_keep < 1:
        channels = max(1, round(before * plan.ffn_keep))
        shrink_ffn(model, channel_importance(model, batches), channels)
        say(f"FFN channels: kept the {channels} of {before} most important in each layer")
        report["ffn_channels"] = {"before": before, "after": channels}
    report["parameters"] = {"before": params_before, "after": parameters(model)}
    report["seconds"] = {"pruning": round(time.monotonic() - began, 1)}
    publish(out, model.eval(), tokenizer, ref, f"{ref.name}-pruned", corpus, evaluate_texts, report)
    return report
