"""The gateway's environment settings."""

from __future__ import annotations

from pydantic import Field

from contract.settings import CommonSettings


class GatewaySettings(CommonSettings):
    """``MODELGATE_*`` variables of the gateway process, on top of the common ones."""

    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body accepted (413 above)."""

    job_ttl_s: int = 24 * 3600
    """How long an async job's result or failure stays readable."""

    batch_max_file_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    """Largest Batch API input file (413 above); ``POST /v1/files`` may be this large even
    where ``max_body_bytes`` is smaller."""

    batch_max_lines: int = Field(default=5_000, gt=0)
    """Most requests in one Batch API input file (413 above)."""

    api_keys: str = ""
    """Comma-separated SHA-256 hashes of accepted API keys; empty (and no file): no auth."""

    api_keys_file: str | None = None
    """A file of SHA-256 key hashes, one a line."""

    coalesce: bool = True
    """Send concurrent sync requests for one model to its workers as one job (each request
    keeps its own result, error, deadline and cancel); off: one job per request."""

    redis_max_connections: int = Field(default=32, gt=0, le=10_000)
    """Connections per pool (jobs, cache) of one gateway process; a request that finds them all
    busy waits for one, up to ``redis_pool_timeout_s``, then gets 429."""

    redis_pool_timeout_s: float = Field(default=5.0, gt=0)
    """How long a request waits for a free Redis connection."""
