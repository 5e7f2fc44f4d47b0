"""The official ``openai`` client against the running stack: embeddings in both encodings,
batches of texts and token ids, dimensions, usage from the model's tokenizer, models, errors
in OpenAI's shape, and API keys."""

from __future__ import annotations

import base64
import struct
import time
import uuid

import httpx
import httpx2
import numpy as np
import openai
import pytest

from gateway.auth import hash_key
from tests.conftest import Stack
from tests.integration.test_security import client_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)


def predict(stack: Stack, model: str, inputs: object, **parameters: object) -> list[list[float]]:
    body = {"inputs": inputs, "parameters": parameters}
    r = httpx.post(f"{stack.url}/models/{model}/predict", json=body, timeout=60)
    assert r.status_code == 200, r.text
    outputs: list[list[float]] = r.json()["outputs"]
    return outputs


def texts(n: int) -> list[str]:
    """Texts no other test sent (so the first call computes them)."""
    tag = uuid.uuid4().hex[:8]
    return [f"openai client sentence {i} {tag}" for i in range(n)]


def test_default_call_is_base64_and_equals_predict(stack: Stack, client: openai.OpenAI) -> None:
    sent = texts(3)
    raw = client.embeddings.with_raw_response.create(model="minilm", input=sent)
    assert raw.http_request.read()  # the client asked for base64 on its own
    assert b'"encoding_format":"base64"' in raw.http_request.content.replace(b" ", b"")
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1, 2]
    expected = predict(stack, "minilm", sent)
    for got, want in zip(result.data, expected, strict=True):
        assert len(got.embedding) == 384
        assert np.allclose(got.embedding, want, atol=1e-6)
    assert result.model == "minilm"
    assert result.usage.prompt_tokens == result.usage.total_tokens > 3 * 4


def test_float_encoding_single_text_and_usage_from_the_tokenizer(
    stack: Stack, client: openai.OpenAI
) -> None:
    from transformers import AutoTokenizer

    from contract.config import load_registry

    text = texts(1)[0]
    result = client.embeddings.create(model="minilm", input=text, encoding_format="float")
    assert len(result.data) == 1
    assert result.data[0].embedding == pytest.approx(predict(stack, "minilm", text), abs=1e-6)
    location = load_registry(stack.config).get("minilm")
    assert location is not None
    from workers.pipelines import resolve_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_source(location, "."))
    assert result.usage.prompt_tokens == len(tokenizer(text)["input_ids"])
    # A cache hit reports the same usage.
    again = client.embeddings.create(model="minilm", input=text, encoding_format="float")
    assert again.usage.prompt_tokens == result.usage.prompt_tokens


def test_token_id_inputs_embed_like_their_text(stack: Stack, client: openai.OpenAI) -> None:
    from transformers import AutoTokenizer

    from contract.config import load_registry
    from workers.pipelines import resolve_source

    spec = load_registry(stack.config).get("minilm")
    assert spec is not None
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(spec, "."))
    sent = texts(2)
    ids = [tokenizer(t)["input_ids"] for t in sent]
    mixed = client.embeddings.create(model="minilm", input=ids, encoding_format="float")
    one = client.embeddings.create(model="minilm", input=ids[0], encoding_format="float")
    expected = predict(stack, "minilm", sent)
    assert np.allclose([d.embedding for d in mixed.data], expected, atol=1e-5)
    assert np.allclose(one.data[0].embedding, expected[0], atol=1e-5)
    assert mixed.usage.prompt_tokens == sum(len(i) for i in ids)


def test_dimensions(stack: Stack, client: openai.OpenAI) -> None:
    sent = texts(2)
    result = client.embeddings.create(model="minilm", input=sent, dimensions=128)
    expected = predict(stack, "minilm", sent, dimensions=128)
    assert [len(d.embedding) for d in result.data] == [128, 128]
    assert np.allclose([d.embedding for d in result.data], expected, atol=1e-6)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.embeddings.create(model="minilm", input="x", dimensions=100)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "dimensions" and "[256, 128]" in error["message"]


def test_base64_is_little_endian_float32(stack: Stack) -> None:
    body = {"model": "minilm", "input": "endianness", "encoding_format": "base64"}
    r = httpx.post(f"{stack.url}/v1/embeddings", json=body, timeout=60)
    assert r.status_code == 200, r.text
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    vector = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert np.allclose(vector, predict(stack, "minilm", "endianness"), atol=1e-6)


def test_errors_are_openai_shaped(stack: Stack, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(model="no-such-model", input="x")
    body = unknown.value.body
    assert isinstance(body, dict)
    assert body["code"] == "unknown_model" and body["param"] == "model"
    assert body["type"] == "invalid_request_error" and "minilm" in body["message"]
    with pytest.raises(openai.BadRequestError) as wrong:
        client.embeddings.create(model="tiny-cls", input="x")
    assert "text-classification" in str(wrong.value)
    with pytest.raises(openai.APIStatusError) as too_long:
        client.embeddings.create(model="minilm", input="x" * 2001)
    assert too_long.value.status_code == 413
    assert too_long.value.body["code"] == "payload_too_large"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(model="minilm", input=[-1, 5])
    r = httpx.post(f"{stack.url}/v1/embeddings", json={"model": "minilm"}, timeout=10)
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "input"
    out_of_vocab = httpx.post(
        f"{stack.url}/v1/embeddings", json={"model": "minilm", "input": [10**7]}, timeout=60
    )
    assert out_of_vocab.status_code == 422, out_of_vocab.text
    assert "vocabulary" in out_of_vocab.json()["error"]["message"]


def test_models(stack: Stack, client: openai.OpenAI) -> None:
    listed = {m.id: m for m in client.models.list()}
    assert {"minilm", "tiny-cls", "tiny-rerank"} <= set(listed)
    assert listed["minilm"].owned_by == "modelgate"
    assert client.models.retrieve("minilm").id == "minilm"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


async def test_api_key_is_what_the_client_sends(stack: Stack) -> None:
    app_client, dispatcher = client_for(stack, stack.redis_url, api_keys=hash_key("s3cret"))
    transport = httpx2.ASGITransport(app=app_client._transport.app)  # type: ignore[attr-defined]
    http = httpx2.AsyncClient(transport=transport, base_url="http://gw/v1")
    try:
        good = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="s3cret", http_client=http)
        result = await good.embeddings.create(model="minilm", input="keyed")
        assert len(result.data[0].embedding) == 384
        bad = openai.AsyncOpenAI(
            base_url="http://gw/v1", api_key="wrong", http_client=http, max_retries=0
        )
        with pytest.raises(openai.AuthenticationError) as caught:
            await bad.models.list()
        assert caught.value.body["type"] == "authentication_error"  # type: ignore[index]
    finally:
        await http.aclose()
        await app_client.aclose()
        await dispatcher.close()


def test_the_client_backs_off_by_retry_after(stack: Stack) -> None:
    """``slowpoke`` has no worker in this session: 503 with ``Retry-After``, which the client's
    own retry honours before it gives up."""
    sent: list[httpx2.Request] = []
    http = httpx2.Client(event_hooks={"request": [sent.append]})
    client = openai.OpenAI(
        base_url=stack.url + "/v1", api_key="unused", max_retries=1, http_client=http
    )
    raw = httpx.post(
        f"{stack.url}/v1/embeddings", json={"model": "slowpoke", "input": "x"}, timeout=10
    )
    assert raw.status_code == 503 and raw.headers["retry-after"] == "5"
    assert raw.json()["error"]["code"] == "model_unavailable"
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="slowpoke", input="x")
    assert len(sent) == 2, "one retry"
    assert time.monotonic() - started >= 4.5, "the retry waited for Retry-After"
