"""What every task engine shares: loading a tokenizer and a model on one device, the token
limit and the too-long check, running a batch in the passes the batching policy chooses
(length-sorted, under the item count and the token budget), pooling, and warm-up.

A task is a subclass in its own module that names its model class (``auto_class``) and says how
one chunk of items becomes rows (``_forward``) and rows become outputs (``_outputs``), or, for
the tasks whose post-processing is the transformers pipeline's own (token classification,
fill-mask, question answering), wraps that pipeline around the same loaded model
(:class:`PipelineTask`). Either way it returns what the transformers pipeline for the task returns
on the same inputs (within floating-point tolerance; the tests state it); question answering,
whose pipeline transformers 5 removed, documents its own reference.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from transformers import AutoTokenizer, Pipeline, pipeline

from contract.config import ModelSpec
from contract.tasks import TASKS, TOKEN_IDS, Item, item_chars
from workers.policy import forward_chunks, token_budget
from workers.runtime import ExportedModel, exported
from workers.tasks import Group, InputTooLong, Runner

log = logging.getLogger("modelgate.worker")

NO_LIMIT = 1_000_000
"""Stands in for a tokenizer or model that declares no maximum length."""


class Engine(Runner, Protocol):
    """What a worker serves with: a loaded model, called with batches of items."""

    spec: ModelSpec
    device: str
    fingerprint: str

    @property
    def model(self) -> torch.nn.Module | ExportedModel: ...
    @property
    def max_tokens(self) -> int: ...
    def warm_up(self) -> float: ...


def token_limit(tokenizer: Any, config: Any) -> int:
    """The most tokens one input may have: the tokenizer's maximum, capped by the model's
    position embeddings when a locally built model has fewer than its tokenizer claims."""
    declared = getattr(tokenizer, "model_max_length", None) or NO_LIMIT
    positions = getattr(config, "max_position_embeddings", None) or NO_LIMIT
    return int(min(declared, positions, NO_LIMIT))


def too_long(name: str, tokens: int, limit: int) -> InputTooLong:
    return InputTooLong(
        f"an input has {tokens} tokens but model {name!r} takes at most {limit} "
        "and its truncation is off"
    )


def mean_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of each row's token vectors over its attention mask (padding never counts)."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def run_passes(
    entries: Sequence[Any], passes: list[list[int]], forward: Callable[[list[Any]], torch.Tensor]
) -> torch.Tensor:
    """``forward`` over each pass (indices into ``entries``, as
    :func:`workers.policy.forward_chunks` makes them); the rows come back in entry order."""
    if len(passes) == 1:
        return forward([entries[i] for i in passes[0]])
    order = [i for chunk in passes for i in chunk]
    rows = torch.cat([forward([entries[i] for i in chunk]) for chunk in passes])
    restore = torch.tensor(order).argsort()
    return rows[restore.to(rows.device)]


def token_bound(item: Item, by_chars: bool) -> int:
    """A cheap ceiling on the tokens a tokenizer makes of ``item``, special tokens included:
    WordPiece (``by_chars``) makes at most one a character, byte-level BPE at most one a byte of
    UTF-8 (SentencePiece about that). A batch within the budget at this ceiling needs no count;
    a ceiling too low only lets one pass exceed the budget, it never changes an output."""
    if isinstance(item, str):
        texts = [item]
    elif isinstance(item.get(TOKEN_IDS), list):
        return len(item[TOKEN_IDS])
    else:
        texts = [v for v in item.values() if isinstance(v, str)]
    return sum(len(t) if by_chars else len(t.encode()) for t in texts) + 4


def check_lengths(tokenizer: Any, texts: list[str], name: str, limit: int) -> None:
    """Refuse, before running it, an input with more tokens than the model takes (for a model
    whose truncation is off)."""
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    if max(lengths, default=0) > limit:
        raise too_long(name, max(lengths), limit)


def count_tokens(tokenizer: Any, items: Sequence[Item], cap: int | None) -> list[int]:
    """Tokens the model reads for each item, special tokens included (what usage reports): a
    text alone, an object's two texts as one pair, a token-id input as given; at most ``cap``
    each when the model cuts long inputs."""
    counts = [0] * len(items)
    singles: dict[int, str] = {}
    pairs: dict[int, tuple[str, str]] = {}
    for i, item in enumerate(items):
        if isinstance(item, str):
            singles[i] = item
        elif isinstance(item.get(TOKEN_IDS), list):
            counts[i] = len(item[TOKEN_IDS])
        else:
            texts = [v for v in item.values() if isinstance(v, str)]
            pairs[i] = (texts[0], texts[1]) if len(texts) > 1 else (texts[0], "")
    if singles:
        for i, ids in zip(singles, tokenizer(list(singles.values()))["input_ids"], strict=True):
            counts[i] = len(ids)
    if pairs:
        first, second = zip(*pairs.values(), strict=True)
        for i, ids in zip(pairs, tokenizer(list(first), list(second))["input_ids"], strict=True):
            counts[i] = len(ids)
    return counts if cap is None else [min(n, cap) for n in counts]


def to_json(value: Any) -> Any:
    """Plain lists, dicts and floats: RQ's JSON serializer cannot store numpy or torch values."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


class TaskEngine:
    """Tokenizer plus model on one device; subclasses add the task."""

    task: ClassVar[str]
    auto_class: ClassVar[Any]
    across_groups = False

    def __init__(
        self,
        spec: ModelSpec,
        location: str,
        device: str,
        dtype: torch.dtype,
        fingerprint: str,
        exports: Path | None = None,
    ) -> None:
        self.spec = spec
        self.location = location
        self.device = device
        self.fingerprint = fingerprint
        self.accepts = frozenset(TASKS[self.task].params.model_fields)
        started = time.perf_counter()
        log.info("loading %s (%s) from %s on %s", spec.name, spec.task, location, device)
        revision = {"revision": spec.source.revision} if spec.source.revision else {}
        self.tokenizer = AutoTokenizer.from_pretrained(location, **revision)
        loaded = self.auto_class.from_pretrained(location, dtype=dtype, **revision)
        self._model: torch.nn.Module | ExportedModel = loaded.to(device).eval()
        if spec.engine != "torch":
            # The same call on an exported graph; the torch module is dropped once exported.
            self._model = exported(
                spec.engine, spec.name, loaded, self.tokenizer, fingerprint, device, exports
            )
        self.config: Any = self._model.config
        self._max_tokens = token_limit(self.tokenizer, self.config)
        self.budget = token_budget(spec.max_batch_tokens, device)
        """Most tokens a forward pass computes, padding included (None: no budget)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        self._by_chars = type(getattr(backend, "model", None)).__name__ == "WordPiece"
        # Pipelines truncate at the tokenizer's maximum: make it the one the model really takes.
        self.tokenizer.model_max_length = self._max_tokens
        self._loaded()
        self.load_s = time.perf_counter() - started
        log.info("loaded %s in %.1f s", spec.name, self.load_s)

    def _loaded(self) -> None:
        """Task set-up once the model is on its device."""

    @property
    def model(self) -> torch.nn.Module | ExportedModel:
        return self._model

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def count_tokens(self, items: list[Item]) -> list[int]:
        """Each item's tokens, as the model reads them (cut to its limit when truncating)."""
        return count_tokens(
            self.tokenizer, items, self.max_tokens if self.spec.truncation else None
        )

    def check_params(self, params: dict[str, Any]) -> None:
        """A worker re-checks names: a job in Redis may carry anything."""
        unknown = set(params) - self.accepts
        if unknown:
            raise ValueError(
                f"parameters not accepted by {self.task}: {', '.join(sorted(unknown))}"
            )

    def __call__(self, items: list[Item], params: dict[str, Any]) -> list[Any]:
        self.check_params(params)
        if not items:
            return []
        with torch.inference_mode():
            return self._run(items, params)

    def run_groups(self, groups: Sequence[Group]) -> list[list[Any]]:
        """Several parameter groups at once; a task that can batch across them overrides this."""
        return [self(items, params) for items, params in groups]

    def _run(self, items: list[Item], params: dict[str, Any]) -> list[Any]:
        return self._outputs(self._rows(items, params), items, params)

    def _rows(self, items: list[Item], params: dict[str, Any]) -> torch.Tensor:
        """One float32 row per item, in item order (see :meth:`in_passes`)."""
        return self.in_passes(items, items, lambda chunk: self._forward(chunk, params))

    def in_passes(
        self,
        entries: Sequence[Any],
        items: Sequence[Item],
        forward: Callable[[list[Any]], torch.Tensor],
    ) -> torch.Tensor:
        """``forward`` over ``entries`` (one per item of ``items``, which says how long each
        is) in the passes :func:`workers.policy.forward_chunks` chooses under
        ``max_batch_size`` and the token budget (``max_batch_tokens``); rows in entry order."""
        return run_passes(entries, self._passes(items), forward)

    def _passes(self, items: Sequence[Item]) -> list[list[int]]:
        """Sorted by characters (enough to sort by, and free) unless the token budget may bind,
        then by tokens (one tokenizer call, for that batch only) under the budget."""
        size, budget = self.spec.max_batch_size, self.budget
        if budget is not None and items:
            cap = self.max_tokens if self.spec.truncation else NO_LIMIT
            ceiling = max(min(token_bound(item, self._by_chars), cap) for item in items)
            if len(items) * ceiling > budget:
                return forward_chunks(self.count_tokens(list(items)), size, budget)
        return forward_chunks([item_chars(item) for item in items], size)

    def _forward(self, items: list[Item], params: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def _outputs(self, rows: torch.Tensor, items: list[Item], params: dict[str, Any]) -> list[Any]:
        raise NotImplementedError

    def encode(
        self,
        texts: list[str],
        pairs: list[str] | None = None,
        *,
        side: str | None = None,
        strategy: str = "longest_first",
    ) -> dict[str, torch.Tensor]:
        """A padded batch on the model's device; cut to the model's limit when truncation is
        on, refused (:class:`InputTooLong`) when it is off."""
        truncate = self.spec.truncation
        try:
            with self.cut_from(side):
                encoded = self.tokenizer(
                    texts,
                    pairs,
                    padding=True,
                    truncation=strategy if truncate else False,
                    max_length=self.max_tokens if truncate else None,
                    return_tensors="pt",
                )
        except Exception as err:
            if pairs is None or "Truncation error" not in str(err):
                raise
            # The strategy may cut only one text of a pair; the other alone is over the limit.
            raise self._pair_too_long(pairs) from None
        if not truncate and encoded["input_ids"].shape[1] > self.max_tokens:
            longest = int(encoded["attention_mask"].sum(dim=1).max())
            raise too_long(self.spec.name, longest, self.max_tokens)
        return {k: v.to(self.device, non_blocking=True) for k, v in encoded.items()}

    @contextlib.contextmanager
    def cut_from(self, side: str | None) -> Iterator[None]:
        """Truncate from ``side`` (``left`` or ``right``; None: the tokenizer's own) inside."""
        default_side = self.tokenizer.truncation_side
        self.tokenizer.truncation_side = side or default_side
        try:
            yield
        finally:
            self.tokenizer.truncation_side = default_side

    def _pair_too_long(self, pairs: list[str]) -> InputTooLong:
        longest = max(len(ids) for ids in self.tokenizer(pairs)["input_ids"])
        return InputTooLong(
            f"the second text of a pair has {longest} tokens, too many to fit with the first in "
            f"the {self.max_tokens} tokens model {self.spec.name!r} takes"
        )

    def check_lengths(self, texts: list[str]) -> None:
        """With truncation off, refuse an input the model cannot take before running it."""
        if not self.spec.truncation:
            check_lengths(self.tokenizer, texts, self.spec.name, self.max_tokens)

    def warm_up_input(self) -> Group:
        """One small request the task takes, run once before the worker announces itself."""
        return ["modelgate warm-up"], {}

    def warm_up(self) -> float:
        started = time.perf_counter()
        self(*self.warm_up_input())
        return time.perf_counter() - started


class PipelineTask(TaskEngine):
    """A task whose batching and post-processing are the transformers pipeline's, run on the
    model and tokenizer loaded above (``batch_size`` makes it one forward pass per chunk)."""

    pipeline_task: ClassVar[str]

    def _loaded(self) -> None:
        self.pipe: Pipeline = pipeline(  # type: ignore[call-overload]
            self.pipeline_task, model=self._model, tokenizer=self.tokenizer, device=self.device
        )

    def _run(self, items: list[Item], params: dict[str, Any]) -> list[Any]:
        batch = min(len(items), self.spec.max_batch_size)
        out = self.pipe(self._pipeline_inputs(items), batch_size=batch, **params)
        values: list[Any] = to_json(out)
        if len(items) == 1 and self._unwrapped(values):
            values = [values]  # a pipeline answers one input without the outer list
        return values

    def _unwrapped(self, out: list[Any] | dict[str, Any]) -> bool:
        return not isinstance(out, list) or not out or not isinstance(out[0], list)

    def _pipeline_inputs(self, items: list[Item]) -> Any:
        texts = [str(item) for item in items]
        self.check_lengths(texts)
        return texts
