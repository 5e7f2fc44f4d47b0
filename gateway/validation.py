"""Checks a request against its model's limits and task before anything is enqueued, and turns
it into the work items a worker computes (one per input; rerank: one per document)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from contract.config import ModelSpec
from contract.tasks import Item, ParameterError, expand, validate_parameters, worker_parameters
from gateway.errors import InvalidInput, PayloadTooLarge


@dataclass(frozen=True)
class Work:
    """A validated request: its items, the parameters workers see, and how to shape outputs."""

    items: list[Item]
    single: bool
    params: dict[str, Any]
    request_params: dict[str, Any]


def prepare(spec: ModelSpec, inputs: Any, parameters: Any, max_inputs: int) -> Work:
    """Validate ``inputs`` (already typed by the model's request schema) and ``parameters``."""
    single = not isinstance(inputs, list)
    given = [
        i.model_dump() if isinstance(i, BaseModel) else i for i in ([inputs] if single else inputs)
    ]
    if not given:
        raise InvalidInput("inputs: give at least one input")
    params = check_parameters(spec, parameters)
    items = expand(spec.task, given)
    if len(items) > max_inputs:
        what = "documents" if spec.task == "rerank" else "inputs"
        raise PayloadTooLarge(
            f"inputs: {len(items)} {what}, {spec.name!r} takes at most {max_inputs} a request",
            limit=max_inputs,
        )
    for i, item in enumerate(given):
        where = "inputs" if single else f"inputs[{i}]"
        for path, text in _texts(item, where):
            _check_text(spec, path, text)
    return Work(items, single, worker_parameters(spec.task, params), params)


def _texts(value: Any, where: str) -> list[tuple[str, str]]:
    """Every string in one input, with its path in the request."""
    if isinstance(value, str):
        return [(where, value)]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _texts(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _texts(v, f"{where}[{i}]")]
    return []


def _check_text(spec: ModelSpec, where: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{where}: not valid Unicode text (lone surrogate)") from None
    if len(text) > spec.max_chars:
        raise PayloadTooLarge(
            f"{where}: {len(text)} characters, {spec.name!r} takes at most {spec.max_chars}",
            limit=spec.max_chars,
        )


def check_parameters(spec: ModelSpec, params: Any) -> dict[str, Any]:
    """The parameters the client set: as the model's typed body already validated them, or
    (a plain dict) validated here; then the ``dimensions`` this model offers."""
    if isinstance(params, BaseModel):
        checked = params.model_dump(exclude_unset=True, exclude_none=True)
    else:
        try:
            checked = validate_parameters(spec.task, params)
        except ParameterError as err:
            raise InvalidInput(str(err), problems=err.problems) from None
    dimensions = checked.get("dimensions")
    if dimensions is not None and dimensions not in (spec.matryoshka_dimensions or []):
        allowed = spec.matryoshka_dimensions
        hint = (
            f"one of {allowed}"
            if allowed
            else "none: its models.yaml entry lists no matryoshka_dimensions"
        )
        raise InvalidInput(
            f"parameters.dimensions: {spec.name!r} does not give {dimensions} dimensions "
            f"(allowed: {hint})"
        )
    return checked
