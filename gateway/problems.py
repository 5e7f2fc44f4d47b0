"""A request body that failed validation, described so a person can fix it.

pydantic reports every branch of a union it tried (``inputs.constrained-str: Input should be a
valid string`` beside ``inputs.list[constrained-str]: List should have at least 1 item``),
a body that is not JSON as ``1: JSON decode error``, and a body sent without a JSON content
type as "Input should be a valid dictionary". Here: the branch that cannot be what the client
meant is dropped (a list was sent, so the string branch's complaint is noise), union tags leave
the field paths, the JSON error says where (line and column), and a wrong content type is named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

UNION_TAG = re.compile(r"^(constrained-)?(str|int|float|bool|bytes|list|dict|tuple)(\[.*\])?$")
"""A loc segment pydantic adds for the branch of a union it tried (``list[constrained-str]``),
or a validator wrapper (``function-after[...]``)."""


def _tag(part: Any) -> bool:
    return isinstance(part, str) and bool(UNION_TAG.match(part) or part.startswith("function-"))


def field_path(loc: tuple[Any, ...]) -> str:
    """``inputs.0`` from ``("body", "inputs", "list[constrained-str]", 0)``."""
    return ".".join(str(p) for p in loc if p != "body" and not _tag(p))


def _other_branch_went_in(error: Mapping[str, Any], errors: Sequence[Mapping[str, Any]]) -> bool:
    """Whether another branch of the same union got further into the value than ``error``'s
    (which complains that a list or an object is not the scalar it wanted)."""
    loc = tuple(error["loc"])
    parent, branch = loc[:-1], loc[-1]
    return any(
        tuple(other["loc"])[: len(parent)] == parent
        and len(other["loc"]) > len(parent)
        and other["loc"][len(parent)] != branch
        and not (other["type"].endswith("_type") and isinstance(other.get("input"), list | dict))
        for other in errors
        if other is not error
    )


def relevant(errors: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    """The errors that concern what the client sent: a union branch's "should be a valid
    string" about a list is dropped when the list branch has its own complaint."""
    kept = [
        e
        for e in errors
        if not (
            e["loc"]
            and _tag(e["loc"][-1])
            and e["type"].endswith("_type")
            and isinstance(e.get("input"), list | dict)
            and _other_branch_went_in(e, errors)
        )
    ]
    return kept or errors


def json_position(body: bytes, offset: int) -> str:
    """``line 2 column 12`` of a character offset into the decoded body (as Python's JSON
    parser, which FastAPI uses, counts)."""
    before = body.decode("utf-8", "replace")[:offset]
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    return f"line {line} column {column}"


@dataclass(frozen=True)
class Described:
    """A failed body as the API reports it."""

    message: str
    """The one problem, or how many there are."""
    problems: list[str]
    """Each problem with its field path."""
    param: str | None
    """The first invalid field's path (OpenAI's error names it as ``param``)."""


def describe(
    errors: Sequence[Mapping[str, Any]], body: bytes | None, content_type: str
) -> Described:
    """``errors`` (pydantic's, with ``loc`` from the body) as a person reads them."""
    problems: dict[str, list[str]] = {}
    kept = relevant(errors)
    for error in kept:
        where, text = _problem(error, body, content_type)
        problems.setdefault(where, [])
        if text not in problems[where]:
            problems[where].append(text)
    lines = [f"{where}: {', or '.join(texts)}" for where, texts in problems.items()]
    message = lines[0] if len(lines) == 1 else f"{len(lines)} problems in the request"
    paths = (field_path(tuple(e.get("loc", ()))) for e in kept)
    return Described(message, lines, next((p for p in paths if p), None))


def _problem(error: Mapping[str, Any], body: bytes | None, content_type: str) -> tuple[str, str]:
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    if kind == "json_invalid":
        offset = loc[-1] if loc and isinstance(loc[-1], int) else 0
        cause = str((error.get("ctx") or {}).get("error") or "invalid JSON")
        where = json_position(body, offset) if body is not None else f"character {offset}"
        return "body", f"not valid JSON at {where}: {cause}"
    if loc == ("body",) and kind in ("model_attributes_type", "dict_type", "missing"):
        if "json" not in content_type:
            sent = content_type or "none"
            return (
                "body",
                f"send a JSON object with 'content-type: application/json' (sent: {sent})",
            )
        return "body", "must be a JSON object"
    return field_path(loc) or "body", str(error.get("msg", "invalid"))
