"""Input limits checked in the gateway before anything is enqueued."""

from __future__ import annotations

import pytest

from contract.config import parse_registry
from gateway.errors import InvalidInput, PayloadTooLarge
from gateway.validation import check_parameters, normalize_inputs

SPEC = parse_registry(
    {
        "models": [
            {
                "name": "m",
                "task": "text-classification",
                "source": {"path": "/m"},
                "max_chars": 5,
            }
        ]
    }
).models[0]


def test_string_and_list_inputs() -> None:
    assert normalize_inputs(SPEC, "abc", 4) == (["abc"], True)
    assert normalize_inputs(SPEC, ["a", "b"], 4) == (["a", "b"], False)


def test_limits() -> None:
    with pytest.raises(InvalidInput):
        normalize_inputs(SPEC, [], 4)
    with pytest.raises(PayloadTooLarge, match="at most 4"):
        normalize_inputs(SPEC, ["a"] * 5, 4)
    with pytest.raises(PayloadTooLarge, match=r"inputs\[1\]: 6 characters"):
        normalize_inputs(SPEC, ["a", "abcdef"], 4)


def test_parameters_map_to_invalid_input() -> None:
    assert check_parameters(SPEC, {"top_k": 1}) == {"top_k": 1}
    with pytest.raises(InvalidInput, match="normalize"):
        check_parameters(SPEC, {"normalize": True})
