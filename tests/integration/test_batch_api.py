"""OpenAI's Batch API with the official client: upload, create, poll while ``request_counts``
move, read the output and error files; validation failures, cancel, and the limits."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)


def jsonl(lines: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def request(custom_id: str, **body: object) -> dict[str, object]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}


def wait_ended(client: openai.OpenAI, batch_id: str, timeout_s: float = 120) -> list[object]:
    """Poll until the batch ends; every state seen on the way."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        seen.append(batch)
        if batch.status in ("completed", "cancelled", "failed"):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not end: {seen[-1]}")


def test_round_trip_with_the_openai_client(stack: Stack, client: openai.OpenAI) -> None:
    tag = uuid.uuid4().hex[:8]
    texts = [f"batch line {i} {tag}" for i in range(12)]
    lines = [request(f"req-{i}", model="minilm", input=t) for i, t in enumerate(texts)]
    lines.append(request("two", model="minilm", input=texts[:2], encoding_format="base64"))
    lines.append(request("unknown", model="no-such-model", input="x"))
    lines.append(request("too-long", model="minilm", input="x" * 3000))
    uploaded = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert batch.status == "in_progress"
    assert batch.request_counts is not None and batch.request_counts.total == 15
    states = wait_ended(client, batch.id)
    final = states[-1]
    assert final.status == "completed"  # type: ignore[attr-defined]
    assert final.request_counts.completed == 13  # type: ignore[attr-defined]
    assert final.request_counts.failed == 2  # type: ignore[attr-defined]
    done = [s.request_counts.completed for s in states]  # type: ignore[attr-defined]
    assert done == sorted(done), "request_counts only move forward"

    output = [json.loads(x) for x in client.files.content(final.output_file_id).text.splitlines()]  # type: ignore[attr-defined]
    by_id = {o["custom_id"]: o for o in output}
    assert set(by_id) == {f"req-{i}" for i in range(12)} | {"two"}
    expected = httpx.post(
        f"{stack.url}/models/minilm/predict", json={"inputs": texts}, timeout=60
    ).json()["outputs"]
    for i in range(12):
        response = by_id[f"req-{i}"]["response"]
        assert response["status_code"] == 200
        vector = response["body"]["data"][0]["embedding"]
        assert np.allclose(vector, expected[i], atol=1e-6)
        assert response["body"]["usage"]["prompt_tokens"] > 0
    two = by_id["two"]["response"]["body"]["data"]
    assert [d["index"] for d in two] == [0, 1] and isinstance(two[0]["embedding"], str)

    errors = client.files.content(final.error_file_id).text.splitlines()  # type: ignore[attr-defined]
    failed = {e["custom_id"]: e["response"] for e in map(json.loads, errors)}
    assert failed["unknown"]["status_code"] == 404
    assert failed["unknown"]["body"]["error"]["code"] == "unknown_model"
    assert failed["too-long"]["status_code"] == 413


def test_a_file_that_is_not_a_batch_fails_validation(client: openai.OpenAI) -> None:
    lines = jsonl(
        [request("a", model="minilm", input="x"), request("a", model="minilm", input="y")]
    )
    bad = lines + b"not json\n"
    uploaded = client.files.create(file=("bad.jsonl", bad), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    codes = {(e.code, e.line) for e in batch.errors.data}
    assert codes == {("duplicate_custom_id", 2), ("invalid_request", 3)}


def test_cancel_stops_queued_lines(stack: Stack, client: openai.OpenAI) -> None:
    tag = uuid.uuid4().hex[:8]
    texts = [f"cancel me {i} {tag} " + "word " * 200 for i in range(40)]
    lines = [request(f"c{i}", model="minilm", input=t) for i, t in enumerate(texts)]
    uploaded = client.files.create(file=("c.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    again = client.batches.cancel(batch.id)  # idempotent
    assert again.status in ("cancelling", "cancelled")
    final = wait_ended(client, batch.id)[-1]
    assert final.status == "cancelled"  # type: ignore[attr-defined]
    counts = final.request_counts  # type: ignore[attr-defined]
    assert counts.completed + counts.failed == 40
    assert counts.failed > 0, "a cancel right after creation leaves some lines unrun"
    errors = client.files.content(final.error_file_id).text.splitlines()  # type: ignore[attr-defined]
    assert {json.loads(e)["error"]["code"] for e in errors} == {"batch_cancelled"}


def test_limits_and_unknown_ids(stack: Stack, client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_" + "0" * 32)
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/embeddings", completion_window="24h"
        )
    many = b"".join(b'{"custom_id": "x"}\n' for _ in range(5_001))
    r = httpx.post(
        f"{stack.url}/v1/files", files={"file": ("m.jsonl", many)}, data={"purpose": "batch"}
    )
    assert r.status_code == 413, r.text
    assert "5001 requests" in r.json()["error"]["message"]


def test_a_refused_line_reads_as_the_sync_api_answers_it(
    stack: Stack, client: openai.OpenAI
) -> None:
    body = {"model": "minilm", "input": "x", "dimensions": "many"}
    uploaded = client.files.create(
        file=("r.jsonl", jsonl([request("bad", **body)])), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    final = wait_ended(client, batch.id)[-1]
    (line,) = client.files.content(final.error_file_id).text.splitlines()  # type: ignore[attr-defined]
    sync = httpx.post(f"{stack.url}/v1/embeddings", json=body, timeout=30)
    assert json.loads(line)["response"]["status_code"] == sync.status_code == 422
    assert json.loads(line)["response"]["body"] == sync.json()
