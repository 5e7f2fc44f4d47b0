"""Open Inference Protocol v2 (KServe, Triton, MLServer) -- being written."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.errors import GatewayError

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])


def oip_error(err: GatewayError) -> dict[str, Any]:
    """An error as the protocol writes it."""
    return {"error": err.message}
