"""How a body that failed validation is described: one problem per field, no union noise,
JSON errors with line and column, a wrong content type named."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field, StrictStr, ValidationError

from gateway.problems import describe, json_position

Text = Annotated[StrictStr, Field(min_length=0)]


class Body(BaseModel):
    inputs: Text | Annotated[list[Text], Field(min_length=1)]


def errors_of(value: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as caught:
        Body.model_validate(value)
    return [{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"inputs": []}, ["inputs: List should have at least 1 item after validation, not 0"]),
        ({"inputs": [1]}, ["inputs.0: Input should be a valid string"]),
        (
            {"inputs": 5},
            ["inputs: Input should be a valid string, or Input should be a valid list"],
        ),
        ({}, ["inputs: Field required"]),
    ],
)
def test_a_union_reports_the_branch_the_client_meant(
    value: dict[str, Any], expected: list[str]
) -> None:
    described = describe(errors_of(value), None, "application/json")
    assert described.problems == expected
    assert described.message == expected[0]
    assert described.param == expected[0].split(":")[0]  # the field of the first problem


def test_json_errors_say_where() -> None:
    body = b'{\n  "inputs": [1,,]}'
    error = {
        "type": "json_invalid",
        "loc": ("body", 17),
        "msg": "JSON decode error",
        "ctx": {"error": "Expecting value"},
    }
    assert describe([error], body, "application/json").message == (
        "body: not valid JSON at line 2 column 16: Expecting value"
    )
    assert json_position("é\nab".encode(), 4) == "line 2 column 3"  # characters, not bytes


def test_a_body_sent_without_a_json_content_type_is_named() -> None:
    error = {"type": "model_attributes_type", "loc": ("body",), "msg": "Input should be..."}
    described = describe([error], b"inputs=x", "application/x-www-form-urlencoded")
    assert described.message == (
        "body: send a JSON object with 'content-type: application/json' "
        "(sent: application/x-www-form-urlencoded)"
    )
    assert describe([error], b"[1]", "application/json").message == "body: must be a JSON object"
