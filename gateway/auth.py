"""API keys: off unless configured; then every endpoint but the probes (/healthz, /readyz and
the Open Inference Protocol's /v2/health/live|ready) needs
``Authorization: Bearer <key>``.

Only SHA-256 hashes of keys are configured (``MODELGATE_API_KEYS``, comma-separated, or
``MODELGATE_API_KEYS_FILE``, one a line; ``modelgate hash-key`` makes one). A presented key is
hashed and compared with every configured hash in constant time; keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import NATIVE, ErrorDialects, Unauthorized, error_response

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/dashboard"})
"""Probes stay reachable without a key: orchestrators call them. So does the dashboard's page,
which holds no data: it asks for a key when ``/status`` needs one."""
OPEN_PREFIXES = ("/dashboard-assets/",)
"""The page's static script and style."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_key_hashes(inline: str, file: str | None) -> frozenset[str]:
    """Configured hashes from the variable and the file; ``#`` starts a comment in the file."""
    hashes = [h.strip().lower() for h in inline.split(",") if h.strip()]
    if file:
        for line in Path(file).read_text().splitlines():
            line = line.split("#", 1)[0].strip().lower()
            if line:
                hashes.append(line)
    bad = [h for h in hashes if len(h) != 64 or any(c not in "0123456789abcdef" for c in h)]
    if bad:
        raise ValueError(
            f"{len(bad)} API key hash(es) are not SHA-256 hex; use `modelgate hash-key`"
        )
    return frozenset(hashes)


class ApiKeyMiddleware:
    """Answers 401 ``unauthorized`` unless the request carries a configured key."""

    def __init__(
        self, app: ASGIApp, hashes: frozenset[str], dialects: ErrorDialects = NATIVE
    ) -> None:
        self.app = app
        self.hashes = tuple(hashes)
        self.dialects = dialects

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        presented = hash_key(key.strip())
        matched = False
        for known in self.hashes:  # compare with all of them: no early exit to time
            matched |= hmac.compare_digest(presented, known)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or path in OPEN_PATHS
            or path.startswith(OPEN_PREFIXES)
            or self._allowed(scope)
        ):
            await self.app(scope, receive, send)
            return
        err = Unauthorized("a valid API key is required: send 'Authorization: Bearer <key>'")
        scope.setdefault("state", {})["error_code"] = err.code
        await error_response(err, scope["path"], self.dialects)(scope, receive, send)
