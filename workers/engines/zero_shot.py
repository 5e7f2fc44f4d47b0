"""Zero-shot classification with an NLI model: each (input, candidate label) pair is a premise
and a hypothesis; the entailment logits become label scores as in the transformers pipeline.
Pairs from every request in a batch run together, whatever labels each request brought."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from contract.tasks import Item, ZeroShotParams, hypothesis
from workers.engines.classification import SequenceScorer
from workers.tasks import Group

DEFAULT_TEMPLATE = ZeroShotParams.model_fields["hypothesis_template"].default


class ZeroShotEngine(SequenceScorer):
    task = "zero-shot-classification"
    across_groups = True

    def _loaded(self) -> None:
        super()._loaded()
        labels = self.config.label2id
        # The pipeline's rule: the label named entail*, else the last one.
        self.entailment = next(
            (int(i) for name, i in labels.items() if name.lower().startswith("entail")), -1
        )

    def warm_up_input(self) -> Group:
        return ["modelgate warm-up"], {"candidate_labels": ["ready", "loading"]}

    def run_groups(self, groups: Sequence[Group]) -> list[list[Any]]:
        for _, params in groups:
            self.check_params(params)
        pairs = [
            (str(text), self._hypothesis(params, label))
            for items, params in groups
            for text in items
            for label in params["candidate_labels"]
        ]
        if not pairs:
            return [[] for _ in groups]
        with torch.inference_mode():
            logits = self._pair_logits(pairs).cpu().numpy()
        results, start = [], 0
        for items, params in groups:
            labels = params["candidate_labels"]
            n = len(items) * len(labels)
            block = logits[start : start + n].reshape(len(items), len(labels), -1)
            start += n
            scored = zip(items, block, strict=True)
            results.append([self._scores(str(t), labels, b, params) for t, b in scored])
        return results

    def __call__(self, items: list[Item], params: dict[str, Any]) -> list[Any]:
        return self.run_groups([(items, params)])[0]

    @staticmethod
    def _hypothesis(params: dict[str, Any], label: str) -> str:
        return hypothesis(str(params.get("hypothesis_template", DEFAULT_TEMPLATE)), label)

    def _pair_logits(self, pairs: list[tuple[str, str]]) -> torch.Tensor:
        def forward(chunk: list[tuple[str, str]]) -> torch.Tensor:
            premises, hypotheses = (list(side) for side in zip(*chunk, strict=True))
            return self.logits(self.encode(premises, hypotheses, strategy="only_first"))

        items = [{"text": premise, "text_pair": hyp} for premise, hyp in pairs]
        return self.in_passes(pairs, items, forward)

    def _scores(
        self, text: str, labels: list[str], logits: np.ndarray, params: dict[str, Any]
    ) -> dict[str, Any]:
        if params.get("multi_label") or len(labels) == 1:
            contradiction = -1 if self.entailment == 0 else 0
            pair = logits[..., [contradiction, self.entailment]]
            scores = (np.exp(pair) / np.exp(pair).sum(-1, keepdims=True))[..., 1]
        else:
            entail = logits[..., self.entailment]
            scores = np.exp(entail) / np.exp(entail).sum(-1, keepdims=True)
        top = list(reversed(scores.argsort()))
        return {
            "sequence": text,
            "labels": [labels[i] for i in top],
            "scores": scores[top].tolist(),
        }
