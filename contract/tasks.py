"""The pipeline tasks modelgate serves and the request parameters each one accepts.

Parameters pass from the client to the transformers pipeline only through these allowlists:
a key not listed is rejected by the gateway, so no client can reach a pipeline argument that
was not meant to be public (``device``, ``model_kwargs``, ...).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureExtractionParams(_Params):
    """Sentence embeddings: pooled over tokens, unit length unless ``normalize`` is false."""

    normalize: bool = True


class TextClassificationParams(_Params):
    """Labels with scores. Without ``top_k`` each input gets its best label as one object;
    with ``top_k`` it gets a list of the k best."""

    top_k: Annotated[int, Field(ge=1, le=1000)] | None = None
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = None


PARAMS_BY_TASK: dict[str, type[_Params]] = {
    "feature-extraction": FeatureExtractionParams,
    "text-classification": TextClassificationParams,
}
"""Task name to the pydantic model of its allowed parameters."""

SUPPORTED_TASKS = frozenset(PARAMS_BY_TASK)
"""Tasks a models.yaml entry may name."""


class ParameterError(ValueError):
    """Request parameters that the task does not accept; ``problems`` lists each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def validate_parameters(task: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Check ``params`` against the task's allowlist; return only the ones the client set."""
    model = PARAMS_BY_TASK[task]
    try:
        parsed = model.model_validate(params or {})
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                allowed = ", ".join(model.model_fields) or "none"
                problems.append(f"parameters.{key}: not accepted by {task} (allowed: {allowed})")
            else:
                problems.append(f"parameters.{key}: {e['msg']}")
        raise ParameterError(problems) from None
    return parsed.model_dump(exclude_unset=True)
