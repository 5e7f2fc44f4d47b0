"""The Open Inference Protocol's tensors on the wire, as ``tritonclient.http`` writes and reads
them: the request's JSON header (typed below) and the raw tensor bytes after it (the binary
tensor data extension), BYTES elements decoded to texts, and output tensors encoded as JSON
``data`` or as raw little-endian bytes. Pure functions; no routes.

A binary BYTES tensor is, per element in row-major order, a 4-byte little-endian length and
that many bytes; FP32 and INT64 are packed little-endian. A request with binary inputs carries
``Inference-Header-Content-Length: N``: its first N bytes are the JSON header, the rest is each
binary input's ``parameters.binary_data_size`` bytes, in input order.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from gateway.errors import InferenceFailed, InvalidInput, PayloadTooLarge

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The header that says where a body's JSON ends and its binary tensor data starts."""

PACKED = {"FP32": "f", "INT64": "q"}
"""``struct`` codes of the numeric datatypes the adapter answers with."""

ZLIB_WBITS = {"gzip": 31, "deflate": 15}
"""What ``tritonclient``'s ``request_compression_algorithm`` sends: gzip, or zlib-wrapped."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RequestInput(_Wire):
    """One input tensor: ``data`` in JSON, or ``parameters.binary_data_size`` bytes after it."""

    name: StrictStr
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    datatype: StrictStr
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(_Wire):
    """An output the client wants; ``parameters.binary_data``: as raw bytes after the header."""

    name: StrictStr
    parameters: dict[str, Any] | None = None


class InferRequest(_Wire):
    """The JSON (header) of ``POST /v2/models/{name}/infer``."""

    id: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    inputs: Annotated[list[RequestInput], Field(min_length=1)]
    outputs: list[RequestOutput] | None = None


class TensorMetadata(BaseModel):
    """A tensor in model metadata (-1: any size)."""

    name: str
    datatype: str
    shape: list[int]


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


@dataclass(frozen=True)
class Tensor:
    """An output tensor; ``data`` holds its elements flat, in row-major order."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


@dataclass(frozen=True)
class Layout:
    """A task's output tensors: their metadata, and how the task's outputs fill them."""

    outputs: tuple[TensorMetadata, ...]
    fill: Callable[[list[Any]], list[Tensor]]


def _embeddings(outputs: list[Any]) -> list[Tensor]:
    flat = [x for vector in outputs for x in vector]
    return [Tensor("EMBEDDING", "FP32", [len(outputs), len(outputs[0])], flat)]


def _labels(outputs: list[Any]) -> list[Tensor]:
    ranked = isinstance(outputs[0], list)  # top_k: a list of labels per input
    rows = [o if isinstance(o, list) else [o] for o in outputs]
    if len({len(r) for r in rows}) != 1:
        raise InferenceFailed("the model gave a different number of labels per input")
    shape = [len(rows), len(rows[0])] if ranked else [len(rows)]
    flat = [x for row in rows for x in row]
    return [
        Tensor("LABEL", "BYTES", shape, [x["label"] for x in flat]),
        Tensor("SCORE", "FP32", shape, [x["score"] for x in flat]),
    ]


def _as_json(outputs: list[Any]) -> list[Tensor]:
    data = [json.dumps(o, separators=(",", ":"), ensure_ascii=False) for o in outputs]
    return [Tensor("OUTPUT", "BYTES", [len(outputs)], data)]


def meta(name: str, datatype: str, shape: list[int]) -> TensorMetadata:
    return TensorMetadata(name=name, datatype=datatype, shape=shape)


JSON_OUTPUT = Layout((meta("OUTPUT", "BYTES", [-1]),), _as_json)
LAYOUTS = {
    "feature-extraction": Layout((meta("EMBEDDING", "FP32", [-1, -1]),), _embeddings),
    "text-classification": Layout(
        (meta("LABEL", "BYTES", [-1]), meta("SCORE", "FP32", [-1])), _labels
    ),
    "token-classification": JSON_OUTPUT,
    "zero-shot-classification": JSON_OUTPUT,
    "fill-mask": JSON_OUTPUT,
}
"""The tasks served here, by name; the others' inputs are not one text each."""


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before ``Content-Encoding`` (gzip or deflate), at most ``limit`` bytes."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ZLIB_WBITS:
        raise InvalidInput(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    inflater = zlib.decompressobj(wbits=ZLIB_WBITS[encoding])
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as err:
        raise InvalidInput(f"the body is not valid {encoding} data ({err})") from None
    if len(plain) > limit:
        raise PayloadTooLarge(f"the decompressed body is larger than {limit} bytes")
    if not inflater.eof:
        raise InvalidInput(f"the {encoding} body ends early")
    return plain


def split(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    """The request's JSON header, typed, and the binary tensor data after it."""
    end = len(body) if header_length is None else _header_end(body, header_length)
    try:
        return InferRequest.model_validate_json(body[:end]), body[end:]
    except ValidationError as err:
        problems = [_problem(e) for e in err.errors(include_url=False)]
        message = "; ".join(problems[:5])
        if len(problems) > 1:
            message = f"{len(problems)} problems: {message}"
        raise InvalidInput(message, problems=problems) from None


def _header_end(body: bytes, header_length: str) -> int:
    try:
        end = int(header_length)
    except ValueError:
        end = -1
    if not 0 <= end <= len(body):
        raise InvalidInput(
            f"{HEADER_LENGTH}: {header_length!r} is not a byte count within the body "
            f"({len(body)} bytes)"
        )
    return end


def _problem(error: Any) -> str:
    if error["type"].startswith("json"):
        return f"the inference header is not JSON: {error['msg']}"
    return f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"


def binary_parts(inputs: list[RequestInput], tail: bytes) -> list[bytes | None]:
    """Each input's raw bytes (None: its data is in the JSON), cut from ``tail`` in order."""
    sizes = [_binary_size(i) for i in inputs]
    declared = sum(s for s in sizes if s is not None)
    if declared != len(tail):
        raise InvalidInput(
            f"binary tensor data: the inputs declare {declared} bytes (binary_data_size), "
            f"the body has {len(tail)} after the JSON header ({HEADER_LENGTH})"
        )
    parts: list[bytes | None] = []
    offset = 0
    for size in sizes:
        parts.append(None if size is None else tail[offset : offset + size])
        offset += size or 0
    return parts


def _binary_size(tensor: RequestInput) -> int | None:
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"input {tensor.name!r}: binary_data_size must be a byte count")
    if tensor.data is not None:
        raise InvalidInput(f"input {tensor.name!r}: give data or binary_data_size, not both")
    return size


def texts(tensor: RequestInput, raw: bytes | None) -> list[str]:
    """A BYTES tensor's elements as texts, row-major; their count must match its shape."""
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {tensor.name!r} is BYTES (UTF-8 texts), not {tensor.datatype}")
    if raw is not None:
        elements = [_utf8(tensor.name, i, b) for i, b in enumerate(unpack_bytes(raw, tensor.name))]
    elif tensor.data is None:
        raise InvalidInput(f"input {tensor.name!r} has neither data nor binary_data_size")
    else:
        elements = _json_texts(tensor.name, tensor.data)
    expected = math.prod(tensor.shape)
    if len(elements) != expected:
        raise InvalidInput(
            f"input {tensor.name!r}: shape {tensor.shape} holds {expected} elements, "
            f"the data has {len(elements)}"
        )
    return elements


def _json_texts(name: str, data: Any) -> list[str]:
    flat = list(_flatten(data))
    for i, element in enumerate(flat):
        if not isinstance(element, str):
            raise InvalidInput(
                f"input {name!r}: element {i} is {type(element).__name__}; a BYTES element "
                "in JSON is a string"
            )
    return flat


def _flatten(data: Any) -> Iterator[Any]:
    if not isinstance(data, list):
        yield data
        return
    for item in data:
        yield from _flatten(item)


def _utf8(name: str, index: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"input {name!r}: element {index} is not UTF-8 text") from None


def unpack_bytes(raw: bytes, name: str = "tensor") -> list[bytes]:
    """The elements of a binary BYTES tensor."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input {name!r}: binary BYTES data ends inside a length prefix")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidInput(f"input {name!r}: binary BYTES element of {size} bytes is cut off")
        elements.append(raw[offset : offset + size])
        offset += size
    return elements


def pack(tensor: Tensor) -> bytes:
    """A tensor's elements as the binary extension writes them."""
    if tensor.datatype == "BYTES":
        encoded = [str(e).encode("utf-8") for e in tensor.data]
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    return struct.pack(f"<{len(tensor.data)}{PACKED[tensor.datatype]}", *tensor.data)


def encode(tensors: list[Tensor], binary: set[str]) -> tuple[list[dict[str, Any]], bytes]:
    """The response's ``outputs`` entries, and the raw bytes of those named in ``binary``."""
    entries, raw = [], []
    for t in tensors:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if t.name in binary:
            raw.append(pack(t))
            entry["parameters"] = {"binary_data_size": len(raw[-1])}
        else:
            entry["data"] = t.data
        entries.append(entry)
    return entries, b"".join(raw)


def binary_body(header: dict[str, Any], raw: bytes) -> tuple[bytes, int]:
    """A binary response's body and the byte length of its JSON header."""
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return head + raw, len(head)


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema with its ``$defs`` written in place (an OpenAPI operation's
    schema cannot point into a ``$defs`` of its own)."""
    schema = model.model_json_schema()
    return dict(_inline(schema, schema.get("$defs", {})))


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        return _inline(defs[ref.rsplit("/", 1)[-1]], defs)
    return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
