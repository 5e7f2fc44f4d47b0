"""Extractive question answering: answer spans of the context, with character offsets.

transformers 5 dropped its question-answering pipeline; this is the algorithm of the 4.x
pipeline it replaces: the question and the context are tokenized together, a context longer than
the model takes is read in overlapping windows ``doc_stride`` tokens apart, each window's start
and end logits are softmaxed over its context tokens, spans up to ``max_answer_len`` tokens are
scored as start x end probabilities, and the best ``top_k`` are aligned to whole words. Two
departures, both deliberate: a span two overlapping windows both find counts once, with its
higher score; and ``top_k`` valid spans are searched for until found (4.x filtered its first
``top_k`` candidates and could return fewer). A context with no possible span answers ``[]``.
The truncation setting does not apply: long contexts are always read whole.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering

from contract.tasks import Item
from workers.engines.base import TaskEngine, count_tokens
from workers.tasks import Group, InputTooLong, InvalidItem

MAX_SEQ_LEN = 384
"""Tokens in one window (or the model's maximum, when smaller), as in the 4.x pipeline."""


def _question(item: Item) -> tuple[str, str]:
    if not isinstance(item, dict) or not all(
        isinstance(item.get(k), str) and item[k] for k in ("question", "context")
    ):
        raise InvalidItem("a question-answering input is an object with 'question' and 'context'")
    return item["question"], item["context"]


def _softmax(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    masked = np.where(allowed, logits, -10000.0)
    exp = np.exp(masked - masked.max())
    return np.asarray(exp / exp.sum())


def best_spans(
    start: np.ndarray, end: np.ndarray, allowed: np.ndarray, top_k: int, max_len: int
) -> list[tuple[int, int, float]]:
    """The ``top_k`` (start, end, score) token spans of one window, best first."""
    scores = np.tril(np.triu(np.outer(start, end)), max_len - 1)
    flat = scores.flatten()
    order = np.argsort(-flat, kind="stable")
    spans: list[tuple[int, int, float]] = []
    for index in order:
        s, e = divmod(int(index), scores.shape[1])
        if flat[index] <= 0 or len(spans) == top_k:
            break
        if allowed[s] and allowed[e]:
            spans.append((s, e, float(flat[index])))
    return spans


class QuestionAnsweringEngine(TaskEngine):
    task = "question-answering"
    auto_class = AutoModelForQuestionAnswering

    def count_tokens(self, items: list[Item]) -> list[int]:
        """The question and the whole context: a long context is read in windows, never cut."""
        return count_tokens(self.tokenizer, items, None)

    def warm_up_input(self) -> Group:
        return [{"question": "What is warming up?", "context": "modelgate is warming up."}], {}

    def _run(self, items: list[Item], params: dict[str, Any]) -> list[Any]:
        pairs = [_question(item) for item in items]
        window = min(self.max_tokens, MAX_SEQ_LEN)
        stride = params.get("doc_stride") or min(window // 2, 128)
        try:
            encoded = self.tokenizer(
                [q for q, _ in pairs],
                [c for _, c in pairs],
                truncation="only_second",
                max_length=window,
                stride=stride,
                padding=True,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
                return_tensors="pt",
            )
        except Exception:  # the tokenizer refuses a question that leaves no room for the stride
            longest = max(len(self.tokenizer(q)["input_ids"]) for q, _ in pairs)
            raise InputTooLong(
                f"a question has {longest} tokens: with doc_stride {stride} no context fits in "
                f"the model's {window}-token window"
            ) from None
        start, end = self._logits(encoded)
        owners = encoded["overflow_to_sample_mapping"].tolist()
        answers: list[list[dict[str, Any]]] = [[] for _ in items]
        nulls = [1e6] * len(items)
        for w, owner in enumerate(owners):
            context = pairs[owner][1]
            nulls[owner] = self._window(
                encoded, w, start[w], end[w], context, answers[owner], params, nulls[owner]
            )
        return [self._answer(a, n, params) for a, n in zip(answers, nulls, strict=True)]

    def _logits(self, encoded: Any) -> tuple[np.ndarray, np.ndarray]:
        names = [n for n in self.tokenizer.model_input_names if n in encoded]
        inputs = {n: encoded[n].to(self.device) for n in names}
        size = self.spec.max_batch_size
        starts, ends = [], []
        for k in range(0, inputs[names[0]].shape[0], size):
            out = self.model(**{n: t[k : k + size] for n, t in inputs.items()})
            starts.append(out.start_logits.float().cpu())
            ends.append(out.end_logits.float().cpu())
        return torch.cat(starts).numpy(), torch.cat(ends).numpy()

    def _window(
        self,
        encoded: Any,
        w: int,
        start: np.ndarray,
        end: np.ndarray,
        context: str,
        answers: list[dict[str, Any]],
        params: dict[str, Any],
        null: float,
    ) -> float:
        enc = encoded.encodings[w]
        allowed = np.array([sid == 1 for sid in enc.sequence_ids]) & (
            np.array(enc.attention_mask) == 1
        )
        cls = np.array(enc.ids) == self.tokenizer.cls_token_id
        start_p = _softmax(start, allowed | cls)
        end_p = _softmax(end, allowed | cls)
        if params.get("handle_impossible_answer"):
            null = min(null, float(start_p[0] * end_p[0]))
        start_p[0] = end_p[0] = 0.0
        top_k = params.get("top_k", 1)
        max_len = params.get("max_answer_len", 15)
        for s, e, score in best_spans(start_p, end_p, allowed, top_k, max_len):
            first, last = self._chars(enc, s, e)
            same = next((a for a in answers if (a["start"], a["end"]) == (first, last)), None)
            if same is None:
                answer = context[first:last]
                answers.append({"score": score, "start": first, "end": last, "answer": answer})
            else:
                same["score"] = max(same["score"], score)
        return null

    @staticmethod
    def _chars(enc: Any, s: int, e: int) -> tuple[int, int]:
        """Character offsets of a token span, widened to whole words."""
        try:
            first = enc.word_to_chars(enc.token_to_word(s), sequence_index=1)[0]
            last = enc.word_to_chars(enc.token_to_word(e), sequence_index=1)[1]
        except Exception:
            first, last = enc.offsets[s][0], enc.offsets[e][1]
        return int(first), int(last)

    @staticmethod
    def _answer(answers: list[dict[str, Any]], null: float, params: dict[str, Any]) -> Any:
        if params.get("handle_impossible_answer"):
            answers = [*answers, {"score": null, "start": 0, "end": 0, "answer": ""}]
        top_k = params.get("top_k", 1)
        ranked = sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]
        if top_k == 1 and ranked:
            return ranked[0]
        return ranked  # top_k > 1, or no span at all: a list (empty when nothing fits)
