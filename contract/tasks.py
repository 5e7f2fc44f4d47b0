"""The tasks modelgate serves: for each, the shape of one input, the parameters a request may
set, and the shape of one output. Both sides read this registry; neither imports torch for it.

Parameters pass from the client to a worker only through these allowlists: a key not listed is
rejected by the gateway, so no client can reach a pipeline argument that was not meant to be
public (``device``, ``model_kwargs``, ...).

What crosses Redis per input is an :data:`Item`: a string, or a small JSON object for the tasks
whose input is not one text (a question with its context, a query with one document). A task may
expand one request input into several items (rerank: one item per document), so the cache,
single-flight and batching work per item, and shape the items' outputs back into one answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, ValidationError

Item = str | dict[str, Any]
"""One unit of work for a worker, and one response-cache entry."""

TOKEN_IDS = "token_ids"
"""The key of an embedding input given as token ids (``{"token_ids": [101, ...]}``) rather
than text, as OpenAI's embeddings API allows; the ids are the model's own vocabulary."""

NonEmpty = Annotated[StrictStr, Field(min_length=1)]


def _whole(value: Any) -> Any:
    """JSON Schema counts 3.0 as an integer; so do we (and only whole numbers)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


WHOLE = BeforeValidator(_whole)
"""On an integer parameter: strict (no strings, no booleans), but 3.0 is 3."""
MAX_LABELS = 64
"""Most candidate labels in one zero-shot request: each costs a forward pass per input."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# --- inputs that are not one text -----------------------------------------------------------


class QuestionContext(_Strict):
    """An extractive question: the answer is a span of ``context``."""

    question: NonEmpty
    context: NonEmpty


class RerankQuery(_Strict):
    """A query and the documents to order by relevance to it."""

    query: NonEmpty
    documents: Annotated[list[StrictStr], Field(min_length=1)]


# --- parameters -----------------------------------------------------------------------------


class FeatureExtractionParams(_Strict):
    """Sentence embeddings: pooled over tokens, unit length unless ``normalize`` is false."""

    normalize: bool = True
    dimensions: Annotated[int, Field(ge=1), WHOLE] | None = Field(
        default=None,
        description="keep the first N dimensions (Matryoshka), then renormalise unless normalize "
        "is false; only the sizes the model's models.yaml entry lists in matryoshka_dimensions",
    )
    truncation_direction: Literal["left", "right"] | None = Field(
        default=None, description="which end of a too-long input is cut (default right)"
    )


class TextClassificationParams(_Strict):
    """Labels with scores. Without ``top_k`` each input gets its best label as one object;
    with ``top_k`` it gets a list of the k best."""

    top_k: Annotated[int, Field(ge=1, le=1000), WHOLE] | None = None
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = None


class TokenClassificationParams(_Strict):
    """Entities with character offsets; ``aggregation_strategy`` groups sub-word tokens into
    words and entities as the transformers pipeline does (default none: one per token)."""

    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] | None = None


class ZeroShotParams(_Strict):
    """Scores of labels the model was never trained on, by natural-language inference."""

    candidate_labels: Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_LABELS)]
    multi_label: bool = False
    hypothesis_template: Annotated[StrictStr, Field(pattern=r"\{\}")] = "This example is {}."


class FillMaskParams(_Strict):
    """The likeliest tokens for the mask, or the scores of the given ``targets``."""

    top_k: Annotated[int, Field(ge=1, le=100), WHOLE] | None = None
    targets: Annotated[list[NonEmpty], Field(min_length=1, max_length=100)] | None = None


class QuestionAnsweringParams(_Strict):
    """Extractive answers; a context longer than the model takes is read in overlapping
    windows ``doc_stride`` tokens apart."""

    top_k: Annotated[int, Field(ge=1, le=20), WHOLE] | None = None
    doc_stride: Annotated[int, Field(ge=1, le=128), WHOLE] | None = None
    max_answer_len: Annotated[int, Field(ge=1, le=512), WHOLE] | None = None
    handle_impossible_answer: bool | None = None


class RerankParams(_Strict):
    """``top_n`` best documents (default all), each with its index in the request."""

    top_n: Annotated[int, Field(ge=1), WHOLE] | None = None
    return_documents: bool = False


# --- outputs (documentation of the response, and the tests' expectations) --------------------


class Label(BaseModel):
    label: str
    score: float


class Entity(BaseModel):
    model_config = ConfigDict(extra="allow")
    score: float
    word: str
    start: int | None
    end: int | None
    entity: str | None = Field(default=None, description="per-token label (no aggregation)")
    entity_group: str | None = Field(default=None, description="label of a grouped entity")


class ZeroShotResult(BaseModel):
    sequence: str
    labels: list[str]
    scores: list[float]


class Fill(BaseModel):
    score: float
    token: int
    token_str: str
    sequence: str


class Answer(BaseModel):
    score: float
    start: int
    end: int
    answer: str


class Ranked(BaseModel):
    index: int = Field(description="the document's position in the request")
    score: float
    document: str | None = Field(default=None, description="with return_documents")


@dataclass(frozen=True)
class Task:
    """One servable task, as both sides see it."""

    name: str
    params: type[_Strict]
    input: Any
    output: Any
    example: dict[str, Any]
    many: bool = True
    """Whether a request may send a list of inputs (rerank takes one query per request)."""
    worker_params: frozenset[str] | None = None
    """Parameters the worker sees (None: all); the rest only shape the answer at the gateway."""


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "feature-extraction",
            FeatureExtractionParams,
            StrictStr,
            list[float],
            {"inputs": ["a sentence to embed", "another one"]},
        ),
        Task(
            "text-classification",
            TextClassificationParams,
            StrictStr,
            Label | list[Label],
            {"inputs": "I love this phone", "parameters": {"top_k": 2}},
        ),
        Task(
            "token-classification",
            TokenClassificationParams,
            StrictStr,
            list[Entity],
            {
                "inputs": "Ada Lovelace lived in London.",
                "parameters": {"aggregation_strategy": "simple"},
            },
        ),
        Task(
            "zero-shot-classification",
            ZeroShotParams,
            StrictStr,
            ZeroShotResult,
            {
                "inputs": "The new phone's battery lasts two days.",
                "parameters": {"candidate_labels": ["technology", "sports", "politics"]},
            },
        ),
        Task(
            "fill-mask",
            FillMaskParams,
            StrictStr,
            list[Fill] | list[list[Fill]],
            {"inputs": "Paris is the [MASK] of France.", "parameters": {"top_k": 3}},
        ),
        Task(
            "question-answering",
            QuestionAnsweringParams,
            QuestionContext,
            Answer | list[Answer],
            {"inputs": {"question": "Where did Ada live?", "context": "Ada lived in London."}},
        ),
        Task(
            "rerank",
            RerankParams,
            RerankQuery,
            list[Ranked],
            {
                "inputs": {
                    "query": "capital of France",
                    "documents": ["Paris is in France.", "Berlin is in Germany."],
                },
                "parameters": {"top_n": 1, "return_documents": True},
            },
            many=False,
            worker_params=frozenset(),
        ),
    )
}
"""Every task a models.yaml entry may name, by name."""

SUPPORTED_TASKS = frozenset(TASKS)


class ParameterError(ValueError):
    """Request parameters that the task does not accept; ``problems`` lists each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def validate_parameters(task: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Check ``params`` against the task's allowlist; return only the ones the client set
    (with the required ones, which have no default)."""
    model = TASKS[task].params
    try:
        parsed = model.model_validate(params or {})
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                allowed = ", ".join(model.model_fields) or "none"
                problems.append(f"parameters.{key}: not accepted by {task} (allowed: {allowed})")
            elif e["type"] == "missing":
                problems.append(f"parameters.{key}: required by {task}")
            else:
                problems.append(f"parameters.{key}: {e['msg']}")
        raise ParameterError(problems) from None
    return parsed.model_dump(exclude_unset=True, exclude_none=True)


def worker_parameters(task: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters a worker computes with (and the cache keys on)."""
    keep = TASKS[task].worker_params
    return dict(params) if keep is None else {k: v for k, v in params.items() if k in keep}


def expand(task: str, inputs: list[Item]) -> list[Item]:
    """The work items of a request's inputs (plain JSON)."""
    if task == "rerank":
        query = inputs[0]
        assert isinstance(query, dict)
        return [{"query": query["query"], "document": d} for d in query["documents"]]
    return inputs


def shape(task: str, items: list[Item], outputs: list[Any], params: dict[str, Any]) -> list[Any]:
    """A request's outputs (one per input, in input order) from its items' outputs."""
    stored = shaping(task, items, params)
    return outputs if stored is None else shape_stored(stored, outputs)


def shaping(task: str, items: list[Item], params: dict[str, Any]) -> dict[str, Any] | None:
    """What an async job keeps (in its meta) to shape its outputs when read; None when its
    outputs need no shaping."""
    if task != "rerank":
        return None
    keep = params.get("return_documents")
    documents = [item["document"] for item in items if isinstance(item, dict)] if keep else []
    return {"task": task, "params": params, "documents": documents}


def shape_stored(stored: dict[str, Any], outputs: list[Any]) -> list[Any]:
    return [rank(outputs, stored["params"], stored["documents"])]


def rank(scores: list[float], params: dict[str, Any], documents: list[str]) -> list[Any]:
    """Documents by descending score (ties keep request order), ``top_n`` of them."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    results = []
    for index in order[: params.get("top_n") or len(order)]:
        entry: dict[str, Any] = {"index": index, "score": scores[index]}
        if params.get("return_documents"):
            entry["document"] = documents[index]
        results.append(entry)
    return results


def hypothesis(template: str, label: str) -> str:
    """A zero-shot hypothesis: the template with ``{}`` replaced by the label (replaced rather
    than ``str.format``-ed, so other braces in a template are plain text)."""
    return template.replace("{}", label)


def item_chars(item: Item) -> int:
    """Characters of one item, all its texts together (a token-id input: its length): how a
    worker sorts a batch by length (``max_chars`` limits each text on its own)."""
    if isinstance(item, str):
        return len(item)
    return sum(len(v) for v in item.values() if isinstance(v, str | list))
