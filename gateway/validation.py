"""Checks a request against its model's limits and task before anything is enqueued."""

from __future__ import annotations

from typing import Any

from contract.config import ModelSpec
from contract.tasks import ParameterError, validate_parameters
from gateway.errors import InvalidInput, PayloadTooLarge


def normalize_inputs(
    spec: ModelSpec, inputs: str | list[str], max_inputs: int
) -> tuple[list[str], bool]:
    """The inputs as a list, and whether the client sent a single string."""
    single = isinstance(inputs, str)
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    if not items:
        raise InvalidInput("inputs: give at least one input")
    if len(items) > max_inputs:
        raise PayloadTooLarge(
            f"inputs: {len(items)} inputs, {spec.name!r} takes at most {max_inputs} a request",
            limit=max_inputs,
        )
    for i, text in enumerate(items):
        if not _encodable(text):
            where = "inputs" if single else f"inputs[{i}]"
            raise InvalidInput(f"{where}: not valid Unicode text (lone surrogate)")
        if len(text) > spec.max_chars:
            where = "inputs" if single else f"inputs[{i}]"
            raise PayloadTooLarge(
                f"{where}: {len(text)} characters, {spec.name!r} takes at most {spec.max_chars}",
                limit=spec.max_chars,
            )
    return items, single


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_parameters(spec: ModelSpec, params: dict[str, Any] | None) -> dict[str, Any]:
    try:
        return validate_parameters(spec.task, params)
    except ParameterError as err:
        raise InvalidInput(str(err), problems=err.problems) from None
