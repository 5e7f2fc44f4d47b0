"""Input limits checked in the gateway before anything is enqueued, per task."""

from __future__ import annotations

from typing import Any

import pytest

from contract.config import ModelSpec, parse_registry
from gateway.api.schemas import request_model
from gateway.errors import InvalidInput, PayloadTooLarge
from gateway.validation import check_parameters, prepare


def spec(task: str = "text-classification", **options: Any) -> ModelSpec:
    entry = {"name": "m", "task": task, "source": {"path": "/m"}, "max_chars": 5, **options}
    return parse_registry({"models": [entry]}).models[0]


SPEC = spec()


def test_string_and_list_inputs() -> None:
    one = prepare(SPEC, "abc", None, 4)
    assert (one.items, one.single) == (["abc"], True)
    many = prepare(SPEC, ["a", "b"], None, 4)
    assert (many.items, many.single) == (["a", "b"], False)


def test_limits() -> None:
    with pytest.raises(InvalidInput):
        prepare(SPEC, [], None, 4)
    with pytest.raises(PayloadTooLarge, match="at most 4"):
        prepare(SPEC, ["a"] * 5, None, 4)
    with pytest.raises(PayloadTooLarge, match=r"inputs\[1\]: 6 characters"):
        prepare(SPEC, ["a", "abcdef"], None, 4)


def test_parameters_map_to_invalid_input() -> None:
    assert check_parameters(SPEC, {"top_k": 1}) == {"top_k": 1}
    with pytest.raises(InvalidInput, match="normalize"):
        check_parameters(SPEC, {"normalize": True})


def test_rerank_is_one_item_per_document_and_counts_documents() -> None:
    rerank = spec("rerank")
    body = request_model(rerank, job=False).model_validate(
        {"inputs": {"query": "q", "documents": ["a", "b"]}, "parameters": {"top_n": 1}}
    )
    work = prepare(rerank, body.inputs, body.parameters, 4)  # type: ignore[attr-defined]
    assert work.items == [{"query": "q", "document": "a"}, {"query": "q", "document": "b"}]
    assert work.params == {}  # top_n only shapes the answer: the cache keys on the pair alone
    assert work.request_params == {"top_n": 1}
    with pytest.raises(PayloadTooLarge, match="3 documents"):
        prepare(rerank, {"query": "q", "documents": ["a", "b", "c"]}, None, 2)
    with pytest.raises(PayloadTooLarge, match=r"inputs.documents\[1\]: 6 characters"):
        prepare(rerank, {"query": "q", "documents": ["a", "abcdef"]}, None, 4)


def test_question_answering_limits_each_text() -> None:
    qa = spec("question-answering")
    with pytest.raises(PayloadTooLarge, match=r"inputs\[0\].context: 6 characters"):
        prepare(qa, [{"question": "q", "context": "abcdef"}], None, 4)


def test_dimensions_only_where_the_model_offers_them() -> None:
    plain = spec("feature-extraction")
    with pytest.raises(InvalidInput, match="lists no matryoshka_dimensions"):
        check_parameters(plain, {"dimensions": 8})
    nested = spec("feature-extraction", matryoshka_dimensions=[8, 4])
    assert check_parameters(nested, {"dimensions": 8}) == {"dimensions": 8}
    with pytest.raises(InvalidInput, match=r"allowed: one of \[8, 4\]"):
        check_parameters(nested, {"dimensions": 6})


def test_zero_shot_needs_labels_and_names_the_field() -> None:
    zero = spec("zero-shot-classification")
    with pytest.raises(InvalidInput, match=r"parameters\.candidate_labels: required"):
        check_parameters(zero, {})
    with pytest.raises(InvalidInput, match=r"parameters\.top_k: not accepted"):
        check_parameters(zero, {"candidate_labels": ["a"], "top_k": 1})
