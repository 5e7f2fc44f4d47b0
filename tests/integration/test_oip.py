"""The real ``tritonclient.http`` against the running stack over the Open Inference Protocol v2:
health, server and model metadata, readiness, inference with JSON and binary tensors equal to
``/models/{name}/predict``, request ids, outputs, parameters, compression, and errors in the
protocol's ``{"error": "<message>"}`` shape."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from gateway.api.service import VERSION
from gateway.auth import hash_key
from tests.conftest import Stack
from tests.integration.test_security import client_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[InferenceServerClient]:
    triton = InferenceServerClient(url=stack.url.removeprefix("http://"), network_timeout=90)
    yield triton
    triton.close()


def texts(n: int, stem: str = "open inference sentence") -> list[str]:
    """Texts no other test sent (so the first call computes them)."""
    tag = uuid.uuid4().hex[:8]
    return [f"{stem} {i} {tag}" for i in range(n)]


def predict(stack: Stack, model: str, inputs: list[str], **parameters: Any) -> list[Any]:
    body = {"inputs": inputs, "parameters": parameters}
    r = httpx.post(f"{stack.url}/models/{model}/predict", json=body, timeout=60)
    assert r.status_code == 200, r.text
    outputs: list[Any] = r.json()["outputs"]
    return outputs


def text_input(values: list[str], binary: bool, shape: list[int] | None = None) -> InferInput:
    shape = shape or [len(values)]
    tensor = InferInput("INPUT", shape, "BYTES")
    return tensor.set_data_from_numpy(np.array(values, dtype=object).reshape(shape), binary)


def wanted(*names: str, binary: bool) -> list[InferRequestedOutput]:
    return [InferRequestedOutput(name, binary_data=binary) for name in names]


def as_text(values: np.ndarray) -> list[str]:
    """BYTES elements as texts: bytes when sent as binary data, str when sent in JSON."""
    return [v.decode() if isinstance(v, bytes) else v for v in values.ravel().tolist()]


def is_binary(entry: dict[str, Any]) -> bool:
    binary = "binary_data_size" in entry.get("parameters", {})
    assert binary != ("data" in entry), entry
    return binary


def test_health_and_server_metadata(stack: Stack, client: InferenceServerClient) -> None:
    assert client.is_server_live()
    assert httpx.get(f"{stack.url}/v2/health/live").json() == {"live": True}
    # The session's models.yaml has workerless models (ghost): not ready, like /readyz says.
    ready = httpx.get(f"{stack.url}/v2/health/ready")
    assert ready.status_code == httpx.get(f"{stack.url}/readyz").status_code == 503
    assert ready.json() == {"ready": False}
    assert client.is_server_ready() is False
    assert client.get_server_metadata() == {
        "name": "modelgate",
        "version": VERSION,
        "extensions": ["binary_tensor_data"],
    }


def test_model_readiness(stack: Stack, client: InferenceServerClient) -> None:
    assert client.is_model_ready("minilm")
    assert client.is_model_ready("tiny-cls", model_version="1")
    assert not client.is_model_ready("ghost")
    ghost = httpx.get(f"{stack.url}/v2/models/ghost/ready")
    assert (ghost.status_code, ghost.json()) == (503, {"name": "ghost", "ready": False})
    unknown = httpx.get(f"{stack.url}/v2/models/no-such-model/ready")
    assert unknown.status_code == 404
    assert set(unknown.json()) == {"error"}


def test_model_metadata(client: InferenceServerClient) -> None:
    texts_in = [{"name": "INPUT", "datatype": "BYTES", "shape": [-1]}]
    assert client.get_model_metadata("minilm") == {
        "name": "minilm",
        "versions": ["1"],
        "platform": "modelgate/feature-extraction",
        "inputs": texts_in,
        "outputs": [{"name": "EMBEDDING", "datatype": "FP32", "shape": [-1, -1]}],
    }
    cls = client.get_model_metadata("tiny-cls", model_version="1")
    assert cls["inputs"] == texts_in
    assert cls["outputs"] == [
        {"name": "LABEL", "datatype": "BYTES", "shape": [-1]},
        {"name": "SCORE", "datatype": "FP32", "shape": [-1]},
    ]
    ner = client.get_model_metadata("tiny-ner")["outputs"]
    assert ner == [{"name": "OUTPUT", "datatype": "BYTES", "shape": [-1]}]
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("minilm", model_version="2")
    assert err.value.status() == "404"
    assert "no version '2'" in err.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_embeddings_equal_predict(
    stack: Stack, client: InferenceServerClient, binary: bool
) -> None:
    sent, request_id = texts(2), uuid.uuid4().hex
    result = client.infer(
        "minilm",
        [text_input(sent, binary)],
        outputs=wanted("EMBEDDING", binary=binary),
        request_id=request_id,
    )
    got = result.as_numpy("EMBEDDING")
    assert got.dtype == np.float32
    assert got.shape == (2, 384)
    assert np.allclose(got, predict(stack, "minilm", sent), atol=1e-6)
    response = result.get_response()
    assert response["id"] == request_id
    assert (response["model_name"], response["model_version"]) == ("minilm", "1")
    assert is_binary(result.get_output("EMBEDDING")) is binary


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_labels_and_scores_equal_predict(
    stack: Stack, client: InferenceServerClient, binary: bool
) -> None:
    sent = texts(3, "a review of the protocol")
    result = client.infer(
        "tiny-cls",
        [text_input(sent, binary)],
        outputs=wanted("LABEL", "SCORE", binary=binary),
        request_id="cls-" + uuid.uuid4().hex,
    )
    expected = predict(stack, "tiny-cls", sent)
    assert as_text(result.as_numpy("LABEL")) == [e["label"] for e in expected]
    scores = result.as_numpy("SCORE")
    assert scores.dtype == np.float32
    assert np.allclose(scores, [e["score"] for e in expected], atol=1e-6)
    assert result.get_response()["id"].startswith("cls-")
    assert [is_binary(result.get_output(n)) for n in ("LABEL", "SCORE")] == [binary, binary]


def test_outputs_default_to_all_in_binary_and_a_subset_is_honoured(
    stack: Stack, client: InferenceServerClient
) -> None:
    sent = texts(2)
    every = client.infer(
        "tiny-cls", [text_input(sent, False)]
    )  # the client asks binary_data_output
    assert [o["name"] for o in every.get_response()["outputs"]] == ["LABEL", "SCORE"]
    assert all(is_binary(o) for o in every.get_response()["outputs"])
    assert "id" not in every.get_response()
    score = client.infer(
        "tiny-cls", [text_input(sent, True)], outputs=wanted("SCORE", binary=False)
    )
    assert [o["name"] for o in score.get_response()["outputs"]] == ["SCORE"]
    assert score.as_numpy("LABEL") is None
    assert np.allclose(score.as_numpy("SCORE"), every.as_numpy("SCORE"), atol=1e-6)


def test_a_raw_binary_exchange(stack: Stack) -> None:
    """The bytes on the wire, as the binary tensor data extension writes them."""
    sent = texts(2)
    body, json_size = InferenceServerClient.generate_request_body(
        [text_input(sent, True)], wanted("EMBEDDING", binary=True), request_id="raw"
    )
    r = httpx.post(
        f"{stack.url}/v2/models/minilm/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(json_size)},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-cache"] == "miss"
    length = int(r.headers["inference-header-content-length"])
    header = json.loads(r.content[:length])
    assert header["id"] == "raw"
    assert header["outputs"] == [
        {
            "name": "EMBEDDING",
            "datatype": "FP32",
            "shape": [2, 384],
            "parameters": {"binary_data_size": 2 * 384 * 4},
        }
    ]
    vectors = np.frombuffer(r.content[length:], dtype="<f4").reshape(2, 384)
    assert np.allclose(vectors, predict(stack, "minilm", sent), atol=1e-6)


def test_json_infer_as_in_the_readme(stack: Stack) -> None:
    sentence = texts(1, "The gateway speaks the Open Inference Protocol")[0]
    body = {"inputs": [{"name": "INPUT", "shape": [1], "datatype": "BYTES", "data": [sentence]}]}
    r = httpx.post(f"{stack.url}/v2/models/minilm/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    (output,) = r.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("EMBEDDING", "FP32", [1, 384])
    assert np.allclose(output["data"], predict(stack, "minilm", [sentence])[0], atol=1e-6)


def test_shapes_unicode_versions_and_compression(
    stack: Stack, client: InferenceServerClient
) -> None:
    tag = uuid.uuid4().hex[:8]
    sent = [f"café ☕ {tag}", f"naïve façade {tag}", f"日本語のテキスト {tag}", f"plain {tag}"]
    expected = predict(stack, "minilm", sent)
    for binary, shape, options in [
        (True, [2, 2], {"model_version": "1"}),
        (False, [4, 1], {"request_compression_algorithm": "gzip"}),
        (True, [1, 4], {"request_compression_algorithm": "deflate"}),
    ]:
        result = client.infer("minilm", [text_input(sent, binary, shape)], **options)
        got = result.as_numpy("EMBEDDING")
        assert got.shape == (4, 384), options
        assert np.allclose(got, expected, atol=1e-6), options


def test_task_parameters_pass_through(stack: Stack, client: InferenceServerClient) -> None:
    sent = texts(3)
    short = client.infer("minilm", [text_input(sent, True)], parameters={"dimensions": 128})
    assert np.allclose(
        short.as_numpy("EMBEDDING"), predict(stack, "minilm", sent, dimensions=128), atol=1e-6
    )
    top = client.infer("tiny-cls", [text_input(sent, True)], parameters={"top_k": 2})
    expected = predict(stack, "tiny-cls", sent, top_k=2)
    assert top.as_numpy("LABEL").shape == top.as_numpy("SCORE").shape == (3, 2)
    assert as_text(top.as_numpy("LABEL")) == [x["label"] for row in expected for x in row]
    with pytest.raises(InferenceServerException) as err:
        client.infer("minilm", [text_input(sent, True)], parameters={"top_k": 2})
    assert err.value.status() == "422"
    assert "top_k" in err.value.message()


def test_other_tasks_answer_json_per_input(stack: Stack, client: InferenceServerClient) -> None:
    sent = [f"Ada Lovelace lived in London {uuid.uuid4().hex[:8]}."]
    result = client.infer("tiny-ner", [text_input(sent, True)])
    got = [json.loads(v) for v in as_text(result.as_numpy("OUTPUT"))]
    # /predict's response model also writes the fields an entity lacks, as null.
    expected = [
        [{k: v for k, v in entity.items() if v is not None} for entity in entities]
        for entities in predict(stack, "tiny-ner", sent)
    ]
    assert got == expected
    with pytest.raises(InferenceServerException) as err:
        client.infer("tiny-rerank", [text_input(sent, True)])
    assert err.value.status() == "400"
    assert "serves rerank" in err.value.message()


def test_errors_through_tritonclient(client: InferenceServerClient) -> None:
    numbers = InferInput("INPUT", [1], "FP32").set_data_from_numpy(np.ones(1, np.float32))
    named = InferInput("TEXT", [1], "BYTES").set_data_from_numpy(np.array(["x"], dtype=object))
    cases: list[tuple[str, list[InferInput], list[InferRequestedOutput] | None, str, str]] = [
        ("no-such-model", [text_input(["x"], True)], None, "404", "no model named"),
        ("minilm", [numbers], None, "422", "is BYTES (UTF-8 texts), not FP32"),
        ("minilm", [named], None, "422", "unknown input 'TEXT'"),
        ("minilm", [text_input(["x"], True)], [InferRequestedOutput("LABEL")], "422", "LABEL"),
    ]
    for model, inputs, outputs, status, fragment in cases:
        with pytest.raises(InferenceServerException) as err:
            client.infer(model, inputs, outputs=outputs)
        assert err.value.status() == status, model
        assert fragment in err.value.message()


def _binary(raw: bytes, declared: int | None = None) -> tuple[bytes, dict[str, str]]:
    """A body with one binary BYTES input of ``raw`` bytes; its header declares ``declared``."""
    size = len(raw) if declared is None else declared
    tensor = {"name": "INPUT", "shape": [1], "datatype": "BYTES"}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": size}}]})
    return header.encode() + raw, {"Inference-Header-Content-Length": str(len(header))}


def _json(**body: Any) -> tuple[bytes, dict[str, str]]:
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


ONE = {"name": "INPUT", "shape": [1], "datatype": "BYTES", "data": ["x"]}


@pytest.mark.parametrize(
    ("path", "request_", "status", "fragment"),
    [
        ("no-such-model/infer", _json(inputs=[ONE]), 404, "no model named 'no-such-model'"),
        ("minilm/versions/7/infer", _json(inputs=[ONE]), 404, "no version '7'"),
        ("tiny-rerank/infer", _json(inputs=[ONE]), 400, "serves rerank"),
        ("minilm/infer", (b"not json", {}), 422, "not JSON"),
        ("minilm/infer", _json(inputs=[]), 422, "inputs"),
        ("minilm/infer", _json(inputs=[{**ONE, "shape": [2]}]), 422, "holds 2 elements"),
        ("minilm/infer", _json(inputs=[{**ONE, "datatype": "INT32"}]), 422, "not INT32"),
        ("minilm/infer", _json(inputs=[{**ONE, "data": [7]}]), 422, "is a string"),
        ("minilm/infer", _json(inputs=[ONE, ONE]), 422, "given 2 times"),
        ("minilm/infer", _json(inputs=[ONE], outputs=[{"name": "X"}]), 422, "unknown output"),
        (
            "minilm/infer",
            _json(inputs=[{**ONE, "shape": [65], "data": ["x"] * 65}]),
            413,
            "at most 64",
        ),
        ("minilm/infer", _binary(b"\x01\x00\x00\x00\xff"), 422, "not UTF-8"),
        ("minilm/infer", _binary(b"\x01\x00\x00\x00x", declared=9), 422, "declare 9 bytes"),
        ("minilm/infer", (b"{}", {"Inference-Header-Content-Length": "9"}), 422, "byte count"),
        ("minilm/infer", (b"{}", {"Content-Encoding": "gzip"}), 422, "not valid gzip"),
    ],
)
def test_errors_are_the_protocols_shape(
    stack: Stack, path: str, request_: tuple[bytes, dict[str, str]], status: int, fragment: str
) -> None:
    content, headers = request_
    r = httpx.post(f"{stack.url}/v2/models/{path}", content=content, headers=headers, timeout=60)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    assert fragment in body["error"]
    assert "Traceback" not in r.text


def test_openapi_documents_the_routes(stack: Stack) -> None:
    paths = httpx.get(f"{stack.url}/openapi.json", timeout=10).json()["paths"]
    assert {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}"} <= set(paths)
    infer = paths["/v2/models/{name}/infer"]["post"]
    schema = infer["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["inputs"]
    assert "application/octet-stream" in infer["responses"]["200"]["content"]


async def test_probes_are_open_and_the_rest_needs_a_key(stack: Stack) -> None:
    client, dispatcher = client_for(stack, stack.redis_url, api_keys=hash_key("oip-key"))
    async with client:
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        assert (await client.get("/v2/health/ready")).status_code in (200, 503)
        denied = await client.get("/v2/models/minilm")
        assert denied.status_code == 401
        assert set(denied.json()) == {"error"}
        allowed = await client.get("/v2/models/minilm", headers={"Authorization": "Bearer oip-key"})
        assert allowed.json()["name"] == "minilm"
    await dispatcher.close()
