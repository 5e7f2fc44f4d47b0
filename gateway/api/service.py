"""Service endpoints: ``/`` (what this is), ``/healthz`` (alive), ``/readyz`` (can serve)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.connections import redis_errors
from gateway.deps import DispatcherDep, RegistryDep
from gateway.errors import GatewayError

router = APIRouter(tags=["service"])

VERSION = "0.1.0"


@router.get("/")
async def root(registry: RegistryDep) -> dict[str, Any]:
    """Service name, version, served models and where the docs are."""
    return {
        "service": "modelgate",
        "version": VERSION,
        "models": [m.name for m in registry.models],
        "docs": "/docs",
        "openapi": "/openapi.json",
    }


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (it does not look at Redis or workers)."""
    return {"status": "ok"}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(
    request: Request, registry: RegistryDep, dispatcher: DispatcherDep
) -> PlainTextResponse:
    """Prometheus text format: requests, latency, queue and inference time, batch sizes,
    cache hits, queue depth and live workers per model."""
    async with redis_errors():
        body = await request.app.state.metrics.render(registry, dispatcher)
    return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/readyz", responses={503: {"description": "Redis unreachable or a model has no worker"}}
)
async def readyz(
    registry: RegistryDep, dispatcher: DispatcherDep, models: bool = True
) -> JSONResponse:
    """Ready when Redis answers and every model has at least one live worker (a model with
    ``scale_to_zero`` may have none: its requests wait in its queue for one). With
    ``models=false``, ready when Redis answers, whatever the workers do. (The generated
    Kubernetes manifests probe ``/healthz`` instead: a Redis failover would take every replica
    out at once, and clients would meet refused connections rather than a 503.)"""
    try:
        await dispatcher.ping()
        if not models:
            return JSONResponse({"status": "ready"})
        loads = {m.name: await dispatcher.admission.load(m.name) for m in registry.models}
    except GatewayError as err:
        return JSONResponse(err.body(), status_code=503)
    live = {name: load.live_workers for name, load in loads.items()}
    missing = [
        m.name for m in registry.models if not await dispatcher.admission.servable(m, loads[m.name])
    ]
    if missing:
        causes = {name: await dispatcher.admission.load_error(name) for name in missing}
        body = {
            "error": {"code": "not_ready", "message": f"no live worker for: {', '.join(missing)}"},
            "models": live,
            "load_errors": {name: cause for name, cause in causes.items() if cause},
        }
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready", "models": live})
