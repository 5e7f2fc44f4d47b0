"""Environment settings every modelgate process reads; built in entry points and passed down."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.jobs import DEFAULT_PREFIX


class CommonSettings(BaseSettings):
    """Where the model registry and Redis are. ``MODELGATE_CONFIG``, ``REDIS_URL``,
    ``MODELGATE_PREFIX``; these locate things and never change a model's settings."""

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
    log_format: str = "text"
    log_level: str = "INFO"
