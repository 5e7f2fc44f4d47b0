"""Per-task parameter allowlists."""

from __future__ import annotations

import pytest

from contract.tasks import ParameterError, validate_parameters


def test_allowed_parameters_pass_and_only_set_ones_return() -> None:
    assert validate_parameters("feature-extraction", None) == {}
    assert validate_parameters("feature-extraction", {"normalize": False}) == {"normalize": False}
    assert validate_parameters("text-classification", {"top_k": 3}) == {"top_k": 3}


@pytest.mark.parametrize(
    ("task", "params", "fragment"),
    [
        ("feature-extraction", {"top_k": 1}, "not accepted by feature-extraction"),
        ("text-classification", {"top_k": 0}, "parameters.top_k"),
        ("text-classification", {"function_to_apply": "exp"}, "parameters.function_to_apply"),
        ("text-classification", {"model_kwargs": {}}, "not accepted"),
    ],
)
def test_rejected_parameters_name_the_key(
    task: str, params: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ParameterError) as info:
        validate_parameters(task, params)
    assert fragment in str(info.value)
