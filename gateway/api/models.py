"""``GET /models`` and ``GET /models/{name}``: what is served and whether it is ready."""

from __future__ import annotations

from fastapi import APIRouter

from contract.config import ModelSpec
from gateway.api.schemas import ERROR_RESPONSES, ModelInfo, WorkerInfo, model_schemas
from gateway.deps import DispatcherDep, RegistryDep, SpecDep
from gateway.dispatch import Dispatcher

router = APIRouter(tags=["models"])


async def describe(
    spec: ModelSpec, dispatcher: Dispatcher, with_workers: bool = False
) -> ModelInfo:
    load = await dispatcher.admission.load(spec.name)
    workers = None
    if with_workers:
        workers = [WorkerInfo(**w) for w in await dispatcher.admission.workers(spec.name)]
    return ModelInfo(
        name=spec.name,
        task=spec.task,
        source=spec.source.describe(),
        device=spec.device,
        dtype=spec.dtype,
        ready=load.live_workers > 0,
        live_workers=load.live_workers,
        queue_depth=load.queue_depth,
        max_inputs=spec.max_inputs,
        max_chars=spec.max_chars,
        max_batch_size=spec.max_batch_size,
        timeout_s=spec.timeout_s,
        schemas=model_schemas(spec),
        workers=workers,
    )


@router.get("/models", response_model=list[ModelInfo])
async def list_models(registry: RegistryDep, dispatcher: DispatcherDep) -> list[ModelInfo]:
    """Every model in models.yaml with its live workers and queue depth."""
    return [await describe(spec, dispatcher) for spec in registry.models]


@router.get(
    "/models/{name}",
    response_model=ModelInfo,
    responses={404: ERROR_RESPONSES[404], 422: ERROR_RESPONSES[422]},
)
async def get_model(spec: SpecDep, dispatcher: DispatcherDep) -> ModelInfo:
    """One model: configuration, live workers (device, weights fingerprint), queue depth."""
    return await describe(spec, dispatcher, with_workers=True)
