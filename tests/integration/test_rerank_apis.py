"""Rerank in the shapes clients already speak: Cohere v2 through the real ``cohere`` client,
Jina's/Infinity's body checked field by field; both equal ``/models/{name}/predict``'s ranking."""

from __future__ import annotations

import uuid
from typing import Any

import cohere
import httpx
import pytest
from cohere.core.api_error import ApiError

from tests.conftest import Stack

pytestmark = pytest.mark.integration


def documents(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"document {i} about rerank adapters {tag}" for i in range(n)]


def ranking(stack: Stack, query: str, docs: list[str], **parameters: Any) -> list[dict[str, Any]]:
    body = {"inputs": {"query": query, "documents": docs}, "parameters": parameters}
    r = httpx.post(f"{stack.url}/models/tiny-rerank/predict", json=body, timeout=60)
    assert r.status_code == 200, r.text
    ranked: list[dict[str, Any]] = r.json()["outputs"]
    return ranked


def test_cohere_v2_client(stack: Stack) -> None:
    client = cohere.ClientV2(api_key="unused", base_url=stack.url)
    docs = documents(4)
    result = client.rerank(model="tiny-rerank", query="which adapter?", documents=docs, top_n=2)
    expected = ranking(stack, "which adapter?", docs, top_n=2)
    assert [r.index for r in result.results] == [e["index"] for e in expected]
    assert [r.relevance_score for r in result.results] == pytest.approx(
        [e["score"] for e in expected], abs=1e-6
    )
    assert result.id
    assert result.meta is not None and result.meta.api_version is not None
    assert result.meta.api_version.version == "2"
    assert result.meta.billed_units is not None
    assert result.meta.billed_units.search_units == 1
    assert (result.meta.billed_units.input_tokens or 0) > 4 * 4


def test_cohere_v2_errors(stack: Stack) -> None:
    client = cohere.ClientV2(api_key="unused", base_url=stack.url)
    with pytest.raises(ApiError) as wrong:
        client.rerank(model="minilm", query="q", documents=["d"])
    assert wrong.value.status_code == 400
    assert wrong.value.body == {
        "message": "model 'minilm' serves feature-extraction, and this route needs rerank",
        "code": "wrong_task",
    }
    with pytest.raises(ApiError) as unknown:
        client.rerank(model="nope", query="q", documents=["d"])
    assert unknown.value.status_code == 404
    assert isinstance(unknown.value.body, dict) and unknown.value.body["code"] == "unknown_model"


def test_cohere_v2_return_documents(stack: Stack) -> None:
    docs = documents(3)
    body = {"model": "tiny-rerank", "query": "q", "documents": docs, "return_documents": True}
    r = httpx.post(f"{stack.url}/v2/rerank", json=body, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [set(x) for x in results] == [{"index", "relevance_score", "document"}] * 3
    assert all(x["document"] == {"text": docs[x["index"]]} for x in results)


def test_jina_shape_field_by_field(stack: Stack) -> None:
    docs = documents(3)
    body = {
        "model": "tiny-rerank",
        "query": "jina query",
        "documents": [docs[0], {"text": docs[1]}, docs[2]],
        "top_n": 2,
    }
    r = httpx.post(f"{stack.url}/v1/rerank", json=body, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    assert set(got) == {"model", "object", "usage", "results"}
    assert got["model"] == "tiny-rerank"
    assert set(got["usage"]) == {"total_tokens", "prompt_tokens"}
    assert got["usage"]["total_tokens"] > 0
    expected = ranking(stack, "jina query", docs, top_n=2)
    assert len(got["results"]) == 2
    for result, want in zip(got["results"], expected, strict=True):
        assert set(result) == {"index", "relevance_score", "document"}
        assert result["index"] == want["index"]
        assert result["relevance_score"] == pytest.approx(want["score"], abs=1e-6)
        assert result["document"] == {"text": docs[want["index"]]}
    body["return_documents"] = False
    bare = httpx.post(f"{stack.url}/v1/rerank", json=body, timeout=60).json()
    assert [set(x) for x in bare["results"]] == [{"index", "relevance_score"}] * 2
    assert bare["usage"] == got["usage"]  # a cache hit counts the same tokens


def test_jina_errors_read_as_openai(stack: Stack) -> None:
    body = {"model": "tiny-cls", "query": "q", "documents": ["d"]}
    r = httpx.post(f"{stack.url}/v1/rerank", json=body, timeout=60)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "wrong_task" and error["param"] == "model"
    assert "text-classification" in error["message"]
    empty = httpx.post(f"{stack.url}/v1/rerank", json={**body, "documents": []}, timeout=10)
    assert empty.status_code == 422 and empty.json()["error"]["param"] == "documents"
