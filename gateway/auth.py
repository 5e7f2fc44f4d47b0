"""API keys: off unless configured; then every endpoint but the probes (/healthz, /readyz and
the Open Inference Protocol's /v2/health/live|ready) needs
``Authorization: Bearer <key>``.

Only SHA-256 hashes of keys are configured (``MODELGATE_API_KEYS``, comma-separated, or
``MODELGATE_API_KEYS_FILE``, one a line; ``modelgate hash-key`` makes one). A presented key is
hashed and compared with every configured hash in constant time; keys are never logged.

In the file, a hash may be followed by its limits, ``name=value`` words (see :class:`KeyPolicy`):

    # hash, then limits
    9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  name=search models=minilm
    60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752  name=indexer inputs_per_s=500

The matched key's policy rides in the request's state (``api_key``); :mod:`gateway.quotas`
enforces it where a request names its model.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import NATIVE, ErrorDialects, Unauthorized, error_response

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/dashboard"})
"""Probes stay reachable without a key: orchestrators call them. So does the dashboard's page,
which holds no data: it asks for a key when ``/status`` needs one."""
OPEN_PREFIXES = ("/dashboard-assets/",)
"""The page's static script and style."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyPolicy:
    """What one API key may do. No limit set: everything, as fast as the models go."""

    hash: str
    name: str = ""
    """Shown in logs and used for its rate buckets (default: the hash's first 12 digits)."""
    models: frozenset[str] | None = None
    """The models it may use (``models=a,b``); None: all."""
    requests_per_s: float | None = None
    """Requests a second, with a burst of one second's worth."""
    inputs_per_s: float | None = None
    """Inputs a second (a job's or a request's inputs), with a burst of one second's worth."""

    @property
    def id(self) -> str:
        return self.name or self.hash[:12]

    @property
    def limited(self) -> bool:
        return self.models is not None or bool(self.requests_per_s or self.inputs_per_s)


def _policy(line: str) -> KeyPolicy:
    digest, *words = line.split()
    options: dict[str, Any] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or name not in ("name", "models", "requests_per_s", "inputs_per_s"):
            raise ValueError(
                f"API key option {word!r}: one of name=, models=, requests_per_s=, inputs_per_s="
            )
        if name == "models":
            options[name] = frozenset(m for m in value.split(",") if m)
        elif name == "name":
            options[name] = value
        else:
            try:
                rate = float(value)
            except ValueError:
                rate = -1.0
            if not rate > 0:
                raise ValueError(f"API key option {word!r}: a positive number is needed")
            options[name] = rate
    return KeyPolicy(digest.lower(), **options)


def load_keys(inline: str, file: str | None) -> dict[str, KeyPolicy]:
    """Configured keys by hash, from the variable (hashes only) and the file (a hash a line,
    then its limits); ``#`` starts a comment in the file."""
    policies = [KeyPolicy(h.strip().lower()) for h in inline.split(",") if h.strip()]
    if file:
        for line in Path(file).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                policies.append(_policy(line))
    bad = [
        p.hash
        for p in policies
        if len(p.hash) != 64 or any(c not in "0123456789abcdef" for c in p.hash)
    ]
    if bad:
        raise ValueError(
            f"{len(bad)} API key hash(es) are not SHA-256 hex; use `modelgate hash-key`"
        )
    return {p.hash: p for p in policies}


def load_key_hashes(inline: str, file: str | None) -> frozenset[str]:
    """The configured hashes alone (see :func:`load_keys`)."""
    return frozenset(load_keys(inline, file))


class ApiKeyMiddleware:
    """Answers 401 ``unauthorized`` unless the request carries a configured key."""

    def __init__(
        self, app: ASGIApp, keys: dict[str, KeyPolicy], dialects: ErrorDialects = NATIVE
    ) -> None:
        self.app = app
        self.keys = tuple(keys.values())
        self.dialects = dialects

    def _match(self, scope: Scope) -> KeyPolicy | None:
        header = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        presented = hash_key(key.strip())
        matched = None
        for known in self.keys:  # compare with all of them: no early exit to time
            if hmac.compare_digest(presented, known.hash):
                matched = known
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        policy = self._match(scope)
        if policy is not None:
            scope.setdefault("state", {})["api_key"] = policy
            await self.app(scope, receive, send)
            return
        err = Unauthorized("a valid API key is required: send 'Authorization: Bearer <key>'")
        scope.setdefault("state", {})["error_code"] = err.code
        await error_response(err, scope["path"], self.dialects)(scope, receive, send)
