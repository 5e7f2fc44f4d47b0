"""``GET /models`` and ``GET /models/{name}``: what is served and whether it is ready."""

from __future__ import annotations

from fastapi import APIRouter, Request

from contract.config import ModelSpec
from gateway.api.schemas import ERROR_RESPONSES, ModelInfo, ModelSchemas, WorkerInfo
from gateway.deps import DispatcherDep, RegistryDep, SpecDep
from gateway.dispatch import Dispatcher
from gateway.status import model_state

router = APIRouter(tags=["models"])


async def describe(
    spec: ModelSpec, dispatcher: Dispatcher, schemas: ModelSchemas, with_workers: bool = False
) -> ModelInfo:
    workers = None
    if with_workers:
        workers = [
            WorkerInfo.model_validate(w) for w in await dispatcher.admission.workers(spec.name)
        ]
    return ModelInfo(
        **await model_state(spec, dispatcher.admission),
        source=spec.source.describe(),
        dtype=spec.dtype,
        bulk_share=spec.bulk_share,
        max_inputs=spec.max_inputs,
        max_chars=spec.max_chars,
        timeout_s=spec.timeout_s,
        schemas=schemas,
        workers=workers,
    )


@router.get("/models", response_model=list[ModelInfo], response_model_exclude_none=True)
async def list_models(
    registry: RegistryDep, dispatcher: DispatcherDep, request: Request
) -> list[ModelInfo]:
    """Every model in models.yaml with its live workers and queue depth."""
    schemas = request.app.state.model_schemas
    return [await describe(spec, dispatcher, schemas[spec.name]) for spec in registry.models]


@router.get(
    "/models/{name}",
    response_model=ModelInfo,
    responses={404: ERROR_RESPONSES[404], 422: ERROR_RESPONSES[422]},
)
async def get_model(spec: SpecDep, dispatcher: DispatcherDep, request: Request) -> ModelInfo:
    """One model: configuration, live workers (device, weights fingerprint), queue depth."""
    schemas = request.app.state.model_schemas[spec.name]
    return await describe(spec, dispatcher, schemas, with_workers=True)
