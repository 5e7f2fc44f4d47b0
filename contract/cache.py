"""Response cache keys, shared because workers write entries and the gateway reads them.

One entry per input item: a list request whose items are partly cached computes only the rest.
The key hashes the weights' fingerprint (hub revision, or a hash of a local model's files), the
task parameters and the input, so a changed model or parameter can never return a stale answer.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

LAYOUT = "2"
"""How an entry is laid out (hashed into every key): an entry of an older layout is never read."""


def entry(output: Any, tokens: int) -> bytes:
    """One cached output with the tokens its input took (usage counts them on a hit too)."""
    return orjson.dumps([tokens, output])


def read_entry(raw: bytes | str) -> tuple[Any, int]:
    """``(output, tokens)`` of an entry written by :func:`entry`."""
    tokens, output = orjson.loads(raw)
    return output, int(tokens)


def params_key(params: dict[str, Any]) -> str:
    """Canonical JSON of task parameters: equal parameters, equal text."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def item_text(item: str | dict[str, Any]) -> str:
    """One work item as text: a string itself, an object as canonical JSON (a model's items
    are all of one kind, so the two never meet in one key space)."""
    return item if isinstance(item, str) else params_key(item)


def item_key(
    prefix: str, model: str, fingerprint: str, params: dict[str, Any], item: str | dict[str, Any]
) -> str:
    """Redis key of one cached output."""
    digest = hashlib.sha256()
    for part in (LAYOUT, fingerprint, params_key(params), item_text(item)):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return f"{prefix}:cache:{model}:{digest.hexdigest()}"


def flight_key(
    prefix: str,
    model: str,
    fingerprint: str,
    params: dict[str, Any],
    items: list[str | dict[str, Any]],
) -> str:
    """Key naming the job already computing exactly these inputs (single-flight)."""
    digest = hashlib.sha256()
    for part in (fingerprint, params_key(params), *map(item_text, items)):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return f"{prefix}:flight:{model}:{digest.hexdigest()}"
