"""``GET /models`` and ``GET /models/{name}``: what is served and whether it is ready."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from contract.config import ModelSpec
from gateway.api.schemas import (
    ERROR_RESPONSES,
    LANES_WINDOW_S,
    LaneActivity,
    ModelInfo,
    ModelSchemas,
    WorkerInfo,
)
from gateway.deps import DispatcherDep, RegistryDep, SpecDep
from gateway.dispatch import Dispatcher
from gateway.status import activity, model_state

router = APIRouter(tags=["models"])


async def describe(
    spec: ModelSpec, dispatcher: Dispatcher, schemas: ModelSchemas, with_workers: bool = False
) -> ModelInfo:
    recent = await activity(spec, dispatcher, time.time(), LANES_WINDOW_S)
    info = ModelInfo(
        **await model_state(spec, dispatcher.admission),
        lanes={lane: LaneActivity(**v) for lane, v in recent["lanes"].items()},
        source=spec.source.describe(),
        dtype=spec.dtype,
        bulk_share=spec.bulk_share,
        max_inputs=spec.max_inputs,
        max_chars=spec.max_chars,
        timeout_s=spec.timeout_s,
        schemas=schemas,
    )
    if with_workers:  # left unset otherwise: /models leaves it out rather than show a null
        info.workers = [
            WorkerInfo.model_validate(w) for w in await dispatcher.admission.workers(spec.name)
        ]
    return info


@router.get("/models", response_model=list[ModelInfo], response_model_exclude_unset=True)
async def list_models(
    registry: RegistryDep, dispatcher: DispatcherDep, request: Request
) -> list[ModelInfo]:
    """Every model in models.yaml with its live workers, and per lane (interactive, bulk) its
    queue depth, and its wait and throughput over the last minute."""
    schemas = request.app.state.model_schemas
    return [await describe(spec, dispatcher, schemas[spec.name]) for spec in registry.models]


@router.get(
    "/models/{name}",
    response_model=ModelInfo,
    responses={404: ERROR_RESPONSES[404], 422: ERROR_RESPONSES[422]},
)
async def get_model(spec: SpecDep, dispatcher: DispatcherDep, request: Request) -> ModelInfo:
    """One model: configuration, live workers (device, weights fingerprint), and per lane its
    queue depth, wait and throughput."""
    schemas = request.app.state.model_schemas[spec.name]
    return await describe(spec, dispatcher, schemas, with_workers=True)
