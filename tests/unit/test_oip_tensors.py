"""The Open Inference Protocol's tensor codec against ``tritonclient``'s own encoders and
decoders: what the client sends is read as sent, what the server writes is read back by it."""

from __future__ import annotations

import gzip
import re
import zlib

import numpy as np
import pytest
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from gateway.api import oip_tensors as tensors
from gateway.errors import InvalidInput, PayloadTooLarge

TEXTS = ["plain", "café ☕", "", "tab\tand\nnewline"]


def client_request(
    *inputs: InferInput, outputs: list[InferRequestedOutput] | None = None
) -> tuple[bytes, str | None]:
    body, json_size = InferenceServerClient.generate_request_body(list(inputs), outputs)
    return body, None if json_size is None else str(json_size)


def bytes_input(values: list[str], *, binary: bool, name: str = "INPUT") -> InferInput:
    tensor = InferInput(name, [len(values)], "BYTES")
    return tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)


@pytest.mark.parametrize("binary", [True, False])
def test_a_client_request_reads_back_as_its_texts(binary: bool) -> None:
    body, length = client_request(bytes_input(TEXTS, binary=binary))
    request, tail = tensors.split(body, length)
    parts = tensors.binary_parts(request.inputs, tail)
    assert tensors.texts(request.inputs[0], parts[0]) == TEXTS


def test_two_binary_inputs_are_cut_in_order() -> None:
    first, second = bytes_input(["a", "bb"], binary=True), bytes_input(["ccc"], binary=True)
    body, length = client_request(first, second)
    request, tail = tensors.split(body, length)
    parts = tensors.binary_parts(request.inputs, tail)
    assert [tensors.texts(t, p) for t, p in zip(request.inputs, parts, strict=True)] == [
        ["a", "bb"],
        ["ccc"],
    ]


def test_bytes_packing_matches_tritonclient() -> None:
    packed = tensors.pack(tensors.Tensor("LABEL", "BYTES", [4], TEXTS))
    assert packed == serialize_byte_tensor(np.array(TEXTS, dtype=object)).item()
    assert [b.decode() for b in deserialize_bytes_tensor(packed)] == TEXTS
    assert tensors.unpack_bytes(packed) == [t.encode() for t in TEXTS]


def test_a_binary_response_decodes_with_tritonclient() -> None:
    outputs = [
        tensors.Tensor("EMBEDDING", "FP32", [2, 3], [0.5, -1.25, 3.0, 0.0, 1e-3, 2.5]),
        tensors.Tensor("LABEL", "BYTES", [2], ["pos", "négatif"]),
        tensors.Tensor("SCORE", "FP32", [2], [0.25, 0.75]),
    ]
    entries, raw = tensors.encode(outputs, {"EMBEDDING", "LABEL"})
    body, length = tensors.binary_body({"model_name": "m", "outputs": entries}, raw)
    result = InferenceServerClient.parse_response_body(body, header_length=length)
    embedding = result.as_numpy("EMBEDDING")
    assert embedding.dtype == np.float32
    assert np.allclose(embedding, [[0.5, -1.25, 3.0], [0.0, 1e-3, 2.5]])
    assert result.as_numpy("LABEL").tolist() == [b"pos", "négatif".encode()]
    assert result.get_output("SCORE")["data"] == [0.25, 0.75]  # JSON: not asked as binary


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"datatype": "FP32", "data": [1.0]}, "is BYTES (UTF-8 texts), not FP32"),
        ({"data": ["a", "b"]}, "shape [1] holds 1 elements, the data has 2"),
        ({"data": [1]}, "element 0 is int; a BYTES element in JSON is a string"),
        ({}, "has neither data nor binary_data_size"),
    ],
)
def test_bad_json_tensors_say_what_is_wrong(tensor: dict[str, object], message: str) -> None:
    given = tensors.RequestInput.model_validate(
        {"name": "INPUT", "shape": [1], "datatype": "BYTES", **tensor}
    )
    with pytest.raises(InvalidInput, match=re.escape(message)):
        tensors.texts(given, None)


def test_nested_json_data_is_read_row_major() -> None:
    given = tensors.RequestInput(
        name="INPUT", shape=[2, 2], datatype="BYTES", data=[["a", "b"], ["c", "d"]]
    )
    assert tensors.texts(given, None) == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01\x00\x00\x00\xff", "element 0 is not UTF-8 text"),
        (b"\x05\x00\x00\x00ab", "element of 5 bytes is cut off"),
        (b"\x01\x00", "ends inside a length prefix"),
    ],
)
def test_bad_binary_bytes_say_what_is_wrong(raw: bytes, message: str) -> None:
    given = tensors.RequestInput(
        name="INPUT", shape=[1], datatype="BYTES", parameters={"binary_data_size": len(raw)}
    )
    with pytest.raises(InvalidInput, match=message):
        tensors.texts(given, raw)


def test_binary_sizes_must_add_up_to_the_body() -> None:
    body, length = client_request(bytes_input(["abc"], binary=True))
    request, tail = tensors.split(body, length)
    with pytest.raises(InvalidInput, match=r"declare 7 bytes .* the body has 6"):
        tensors.binary_parts(request.inputs, tail[:-1])
    with pytest.raises(InvalidInput, match="not a byte count within the body"):
        tensors.split(body, str(len(body) + 1))


def test_the_header_is_typed_with_readable_problems() -> None:
    with pytest.raises(InvalidInput, match="not JSON"):
        tensors.split(b"{", None)
    with pytest.raises(InvalidInput, match=r"inputs\.0\.shape"):
        tensors.split(b'{"inputs": [{"name": "INPUT", "shape": "2", "datatype": "BYTES"}]}', None)


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)]
)
def test_compressed_bodies_inflate_within_the_limit(encoding: str, compress: object) -> None:
    plain = b'{"inputs": []}' * 10
    packed = compress(plain)  # type: ignore[operator]
    assert tensors.inflate(packed, encoding, 1000) == plain
    with pytest.raises(PayloadTooLarge):
        tensors.inflate(packed, encoding, len(plain) - 1)
    with pytest.raises(InvalidInput, match="ends early"):
        tensors.inflate(packed[:-4], encoding, 1000)
    with pytest.raises(InvalidInput, match="not supported"):
        tensors.inflate(plain, "br", 1000)


def test_labels_with_top_k_are_a_matrix() -> None:
    top2 = [[{"label": "a", "score": 0.75}, {"label": "b", "score": 0.25}]] * 3
    label, score = tensors.LAYOUTS["text-classification"].fill(top2)
    assert (label.shape, score.shape) == ([3, 2], [3, 2])
    assert label.data == ["a", "b"] * 3
