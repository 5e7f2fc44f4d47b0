"""Response cache keys, shared because workers write entries and the gateway reads them.

One entry per input item: a list request whose items are partly cached computes only the rest.
The key hashes the weights' fingerprint (hub revision, or a hash of a local model's files), the
task parameters and the input, so a changed model or parameter can never return a stale answer.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def params_key(params: dict[str, Any]) -> str:
    """Canonical JSON of task parameters: equal parameters, equal text."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def item_key(prefix: str, model: str, fingerprint: str, params: dict[str, Any], text: str) -> str:
    """Redis key of one cached output."""
    digest = hashlib.sha256()
    for part in (fingerprint, params_key(params), text):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return f"{prefix}:cache:{model}:{digest.hexdigest()}"


def flight_key(
    prefix: str, model: str, fingerprint: str, params: dict[str, Any], texts: list[str]
) -> str:
    """Key naming the job already computing exactly these inputs (single-flight)."""
    digest = hashlib.sha256()
    for part in (fingerprint, params_key(params), *texts):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return f"{prefix}:flight:{model}:{digest.hexdigest()}"
