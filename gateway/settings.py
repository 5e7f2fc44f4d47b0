"""The gateway's environment settings."""

from __future__ import annotations

from contract.settings import CommonSettings


class GatewaySettings(CommonSettings):
    """``MODELGATE_*`` variables of the gateway process, on top of the common ones."""

    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body accepted (413 above)."""

    job_ttl_s: int = 24 * 3600
    """How long an async job's result or failure stays readable."""

    api_keys: str = ""
    """Comma-separated SHA-256 hashes of accepted API keys; empty (and no file): no auth."""

    api_keys_file: str | None = None
    """A file of SHA-256 key hashes, one a line."""
