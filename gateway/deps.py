"""Typed dependencies: what a route needs, resolved from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from contract.config import ModelSpec, Registry
from gateway.dispatch import Dispatcher
from gateway.errors import UnknownModel
from gateway.inference import Inference
from gateway.jobs import JobStore
from gateway.settings import GatewaySettings


async def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


async def get_inference(request: Request) -> Inference:
    inference: Inference = request.app.state.inference
    return inference


async def get_job_store(request: Request) -> JobStore:
    store: JobStore = request.app.state.jobs
    return store


async def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


async def get_spec(name: str, registry: Annotated[Registry, Depends(get_registry)]) -> ModelSpec:
    spec = registry.get(name)
    if spec is None:
        known = ", ".join(m.name for m in registry.models)
        raise UnknownModel(f"no model named {name!r}; known models: {known}")
    return spec


CacheControl = Annotated[
    str | None, Header(description="no-cache: recompute; no-store: no cache at all")
]
"""The request's ``Cache-Control`` header, as the predict and jobs endpoints read it."""

RegistryDep = Annotated[Registry, Depends(get_registry)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
SpecDep = Annotated[ModelSpec, Depends(get_spec)]
InferenceDep = Annotated[Inference, Depends(get_inference)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
