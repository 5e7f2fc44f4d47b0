"""Fill-mask: the likeliest tokens for the mask (``top_k``), or the scores of ``targets``; an
input with several masks gets one list per mask, as the transformers pipeline gives."""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForMaskedLM

from contract.tasks import Item
from workers.engines.base import PipelineTask
from workers.tasks import Group, InputTooLong, InvalidItem


class FillMaskEngine(PipelineTask):
    task = "fill-mask"
    pipeline_task = "fill-mask"
    auto_class = AutoModelForMaskedLM

    def _loaded(self) -> None:
        super()._loaded()
        if self.tokenizer.mask_token is None:
            raise ValueError("fill-mask needs a tokenizer with a mask token")
        self.mask: str = self.tokenizer.mask_token

    def warm_up_input(self) -> Group:
        return [f"modelgate {self.mask} up"], {}

    def _pipeline_inputs(self, items: list[Item]) -> Any:
        texts = [str(item) for item in items]
        if any(self.mask not in text for text in texts):
            raise InvalidItem(f"a fill-mask input needs the mask token {self.mask}")
        self.check_lengths(texts)
        if self.spec.truncation:
            kept = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
            if any(self.tokenizer.mask_token_id not in ids for ids in kept):
                raise InputTooLong(
                    f"a mask is past the {self.max_tokens} tokens model {self.spec.name!r} reads"
                )
        return texts

    def _run(self, items: list[Item], params: dict[str, Any]) -> list[Any]:
        targets = params.get("targets")
        if targets and not any(
            self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in targets
        ):
            raise InvalidItem("parameters.targets: none of the targets is a token of this model")
        if self.spec.truncation:
            params = {**params, "tokenizer_kwargs": {"truncation": True}}
        return super()._run(items, params)

    def _unwrapped(self, out: list[Any] | dict[str, Any]) -> bool:
        # One input: a list of fills, or (several masks) a list of lists of fills.
        return True
