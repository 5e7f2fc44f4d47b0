"""Rerank in Jina's/Infinity's and Cohere v2's shapes -- being written."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.errors import GatewayError

router = APIRouter(tags=["rerank"])


def cohere_error(err: GatewayError) -> dict[str, Any]:
    """An error as Cohere's API writes it."""
    return {"message": err.message, "code": err.code}
