"""Each task through the real gateway, Redis and workers: typed requests, shaped answers, the
cache and async jobs per item, the classic ``POST /predict``, and errors that name the field."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import TASK_MODELS, Stack

pytestmark = pytest.mark.integration


def post(stack: Stack, path: str, body: object, **headers: str) -> httpx.Response:
    return httpx.post(stack.url + path, json=body, timeout=60, headers=headers)


def predict(stack: Stack, model: str, body: object, **headers: str) -> httpx.Response:
    return post(stack, f"/models/{model}/predict", body, **headers)


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["outputs"]


def test_ner_entities_slice_back_to_their_text(stack: Stack) -> None:
    text = "Ada Lovelace lived in London."
    body = {"inputs": [text, "x"], "parameters": {"aggregation_strategy": "simple"}}
    entities, none = ok(predict(stack, "tiny-ner", body))
    assert isinstance(none, list)
    assert entities, "the tiny random head labels some words"
    for e in entities:
        assert text[e["start"] : e["end"]].lower() == e["word"].replace(" ", "").replace("##", "")
        assert {"entity_group", "score"} <= set(e)


def test_zero_shot_ranks_every_candidate_label(stack: Stack) -> None:
    labels = ["travel", "cooking", "science"]
    out = ok(
        predict(stack, "tiny-nli", {"inputs": "a trip", "parameters": {"candidate_labels": labels}})
    )
    assert out["sequence"] == "a trip"
    assert sorted(out["labels"]) == sorted(labels)
    assert out["scores"] == sorted(out["scores"], reverse=True)
    assert abs(sum(out["scores"]) - 1) < 1e-4


def test_fill_mask_and_a_text_without_the_mask(stack: Stack) -> None:
    fills = ok(
        predict(stack, "tiny-mlm", {"inputs": "Paris is a [MASK].", "parameters": {"top_k": 2}})
    )
    assert len(fills) == 2 and all("[MASK]" not in f["sequence"] for f in fills)
    refused = predict(stack, "tiny-mlm", {"inputs": "no mask"})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "invalid_input"
    assert "[MASK]" in refused.json()["error"]["message"]


def test_question_answering_answers_with_offsets(stack: Stack) -> None:
    item = {"question": "Where did Ada live?", "context": "Ada lived in London for years."}
    answer = ok(predict(stack, "tiny-qa", {"inputs": item}))
    assert answer["answer"] == item["context"][answer["start"] : answer["end"]]
    ranked = ok(predict(stack, "tiny-qa", {"inputs": [item], "parameters": {"top_k": 2}}))
    assert len(ranked) == 1 and len(ranked[0]) == 2


def test_rerank_sorts_documents_and_caches_each_pair(stack: Stack) -> None:
    docs = ["London is big.", "Paris has a tower.", "Cats sleep a lot.", "Rome is old."]
    query = {"query": "which city has a tower", "documents": docs}
    body = {"inputs": query, "parameters": {"top_n": 3, "return_documents": True}}
    first = predict(stack, "tiny-rerank", body, **{"Cache-Control": "no-cache"})
    ranked = ok(first)
    assert len(ranked) == 3
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    assert all(r["document"] == docs[r["index"]] for r in ranked)
    everything = ok(predict(stack, "tiny-rerank", {"inputs": query}))
    assert sorted(r["index"] for r in everything) == [0, 1, 2, 3]
    assert all("document" not in r or r["document"] is None for r in everything)
    assert everything[:3] == [{**r, "document": None} for r in ranked] or [
        (r["index"], r["score"]) for r in everything[:3]
    ] == [(r["index"], r["score"]) for r in ranked]
    more = {"query": query["query"], "documents": [*docs, "A new document."]}
    again = predict(stack, "tiny-rerank", {"inputs": more})
    assert again.headers["x-cache"] == "partial", "the four known pairs come from the cache"


def test_rerank_async_job_is_shaped_like_predict(stack: Stack) -> None:
    query = {"query": f"q {uuid.uuid4().hex}", "documents": ["one", "two", "three"]}
    body = {"inputs": query, "parameters": {"top_n": 2, "return_documents": True}}
    accepted = post(stack, "/models/tiny-rerank/jobs", body)  # new pairs: queued, not cached
    assert accepted.status_code == 202, accepted.text
    url = stack.url + accepted.json()["status_url"]
    state = httpx.get(url, params={"wait": 30}, timeout=60).json()
    assert state["status"] == "finished", state
    assert state["outputs"] == ok(predict(stack, "tiny-rerank", body))


def test_classic_predict_on_the_default_model(stack: Stack) -> None:
    one = post(stack, "/predict", {"text": "I love it"})
    assert one.status_code == 200, one.text
    assert set(one.json()) == {"label", "score"}
    assert one.json()["label"] in {"negative", "positive"}
    many = post(stack, "/predict", {"texts": ["good", "bad"]})
    assert many.status_code == 200, many.text
    assert [set(p) for p in many.json()["predictions"]] == [{"label", "score"}] * 2
    same = ok(predict(stack, "tiny-cls", {"inputs": "I love it"}))
    assert one.json() == same
    for bad in ({}, {"text": "a", "texts": ["b"]}, {"text": 3}, {"inputs": "a"}):
        refused = post(stack, "/predict", bad)
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["error"]["code"] == "invalid_input"


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        ("tiny-nli", {"inputs": "x"}, "parameters"),
        ("tiny-nli", {"inputs": "x", "parameters": {"candidate_labels": []}}, "candidate_labels"),
        (
            "tiny-nli",
            {"inputs": "x", "parameters": {"candidate_labels": ["a"], "top_k": 1}},
            "top_k",
        ),
        ("tiny-qa", {"inputs": "just a string"}, "inputs"),
        ("tiny-qa", {"inputs": {"question": "q"}}, "context"),
        ("tiny-rerank", {"inputs": ["q"]}, "inputs"),
        ("tiny-rerank", {"inputs": {"query": "q", "documents": ["d"], "extra": 1}}, "extra"),
        (
            "tiny-ner",
            {"inputs": "x", "parameters": {"aggregation_strategy": "best"}},
            "aggregation",
        ),
        ("tiny-mlm", {"inputs": "[MASK]", "parameters": {"normalize": True}}, "normalize"),
        ("minilm", {"inputs": "x", "parameters": {"top_k": 1}}, "top_k"),
        ("minilm", {"inputs": "x", "parameters": {"dimensions": 100}}, "dimensions"),
    ],
)
def test_wrong_inputs_and_another_tasks_parameters_name_the_field(
    stack: Stack, model: str, body: dict[str, Any], field: str
) -> None:
    refused = predict(stack, model, body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "invalid_input"
    assert field in refused.text


def test_matryoshka_dimensions_through_the_gateway(stack: Stack) -> None:
    vector = ok(predict(stack, "minilm", {"inputs": "hi", "parameters": {"dimensions": 128}}))
    assert len(vector) == 128
    assert abs(sum(v * v for v in vector) - 1) < 1e-4


def test_each_model_names_its_task_and_schema(stack: Stack) -> None:
    spec = httpx.get(stack.url + "/openapi.json", timeout=10).json()
    for name, task in TASK_MODELS.items():
        info = httpx.get(f"{stack.url}/models/{name}", timeout=10).json()
        assert info["task"] == task
        ref = info["schemas"]["request"].rsplit("/", 1)[1]
        body = spec["components"]["schemas"][ref]
        assert body["additionalProperties"] is False
        operation = spec["paths"][info["schemas"]["predict"]]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
            ref
        )
    unknown = post(stack, "/models/nope/predict", {"inputs": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_model"
