"""Environment settings every modelgate process reads; built in entry points and passed down."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.exceptions import RedisError

from contract.jobs import DEFAULT_PREFIX
from contract.redisconn import is_sentinel, sync_client

DEFAULT_EXPORT_DIR = "~/.cache/modelgate/exports"


class CommonSettings(BaseSettings):
    """Where the model registry and Redis are: ``MODELGATE_CONFIG``, ``MODELGATE_REDIS_URL``
    (``REDIS_URL`` is read too, when the first is unset), ``MODELGATE_CACHE_URL``,
    ``MODELGATE_PREFIX``, ``MODELGATE_EXPORT_DIR``; these locate things and never change a
    model's settings."""

    model_config = SettingsConfigDict(
        env_prefix="MODELGATE_", extra="ignore", populate_by_name=True
    )

    config: str = "models.yaml"
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("MODELGATE_REDIS_URL", "REDIS_URL", "redis_url"),
    )
    cache_url: str | None = None
    """Redis for the response cache (``MODELGATE_CACHE_URL``). Give it its own server with
    ``maxmemory`` and ``allkeys-lru``, so cache entries can never crowd out jobs; unset, the
    cache shares the job Redis."""
    prefix: str = DEFAULT_PREFIX
    export_dir: str = DEFAULT_EXPORT_DIR
    """Where workers keep the ONNX exports of ``engine: onnx``/``openvino`` models
    (``MODELGATE_EXPORT_DIR``)."""
    replica_acks: int | None = Field(default=None, ge=0, le=16)
    """Replicas that must hold an accepted async job and a finished batch before modelgate
    counts them done (``MODELGATE_REPLICA_ACKS``, Redis ``WAIT``); unset: 1 with a
    ``redis+sentinel://`` URL (a failover must not lose what was accepted), else 0."""
    log_format: str = "text"
    log_level: str = "INFO"

    @property
    def acks(self) -> int:
        """:attr:`replica_acks` with its default resolved."""
        if self.replica_acks is not None:
            return self.replica_acks
        return 1 if is_sentinel(self.redis_url) else 0

    @property
    def redis_given(self) -> bool:
        """Whether a Redis URL was configured (else ``modelgate up`` starts its own)."""
        return "redis_url" in self.model_fields_set


def redacted(url: str) -> str:
    """A Redis URL fit for a log line: its password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def unreachable(url: str, timeout_s: float = 3.0) -> str | None:
    """Why Redis at ``url`` cannot be used (one line), or None when it answers PING."""
    try:
        client = sync_client(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            client.ping()
        finally:
            client.close()
    except (RedisError, OSError, ValueError) as err:
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"cannot reach Redis at {redacted(url)}: {cause}"
    return None
