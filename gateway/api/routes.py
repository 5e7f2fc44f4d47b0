"""Routes built per model at start-up: ``POST /models/<name>/<action>`` with that model's body
type, so /openapi.json states exactly what each model takes and returns.

This module does not postpone annotations: FastAPI reads each endpoint's signature, and the
body's type in it exists only once the model's schema is built.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from contract.config import ModelSpec, Registry
from gateway.auth import KeyPolicy
from gateway.deps import CacheControl, InferenceDep, SettingsDep, SpecDep
from gateway.errors import UnknownModel, WrongTask
from gateway.inference import Inference
from gateway.quotas import Quotas
from gateway.settings import GatewaySettings


@dataclass
class Call:
    """One request to a model's route, with what its handler needs."""

    body: Any
    inference: Inference
    settings: GatewaySettings
    request: Request
    response: Response
    cache_control: str | None

    @property
    def api_key(self) -> KeyPolicy | None:
        """The API key the request came with, when keys are configured."""
        policy: KeyPolicy | None = self.request.scope.get("state", {}).get("api_key")
        return policy

    async def admit(self, spec: ModelSpec, inputs: int) -> None:
        """The key's limits for ``inputs`` inputs to ``spec`` (403, 429); nothing without keys."""
        quotas: Quotas = self.request.app.state.quotas
        await quotas.admit(self.api_key, spec.name, inputs)


Handler = Callable[[Call], Awaitable[Any]]


async def adapter_call(
    inference: InferenceDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    cache_control: CacheControl = None,
) -> Call:
    """A wire format's call (its body is typed by its own route and set by its handler)."""
    return Call(None, inference, settings, request, response, cache_control)


CallDep = Annotated[Call, Depends(adapter_call)]


def model_endpoint(body_type: Any, handle: Handler) -> Callable[..., Awaitable[Any]]:
    """An endpoint whose body is ``body_type``; ``handle`` does the work."""

    async def endpoint(
        body: body_type,
        inference: InferenceDep,
        settings: SettingsDep,
        request: Request,
        response: Response,
        cache_control: CacheControl = None,
    ) -> Any:
        return await handle(Call(body, inference, settings, request, response, cache_control))

    return endpoint


def add_model_route(
    router: APIRouter, spec: ModelSpec, action: str, endpoint: Any, **options: Any
) -> None:
    """``POST /models/<name>/<action>``, marked as ``spec``'s so that metrics and logs count it
    under the generic path (``/models/{name}/<action>``) and the model's name."""
    router.add_api_route(
        f"/models/{spec.name}/{action}",
        endpoint,
        methods=["POST"],
        operation_id=f"{action}_{spec.name}",
        **options,
    )
    label(router, spec, f"/models/{{name}}/{action}")


def label(router: APIRouter, spec: ModelSpec, template: str) -> None:
    """Mark the router's last route as ``spec``'s under the generic path ``template``."""
    route = router.routes[-1]
    route.template = template  # type: ignore[attr-defined]
    route.model = spec.name  # type: ignore[attr-defined]


def served(registry: Registry, name: str, task: str | None = None) -> ModelSpec:
    """The model a body names; 404 when none is served under that name, 400 when it serves
    another task than the route's."""
    spec = registry.get(name)
    if spec is None:
        known = ", ".join(m.name for m in registry.models)
        err = UnknownModel(f"no model named {name!r}; served models: {known}")
        err.param = "model"
        raise err
    if task is not None and spec.task != task:
        wrong = WrongTask(f"model {name!r} serves {spec.task}, and this route needs {task}")
        wrong.param = "model"
        raise wrong
    return spec


fallback = APIRouter()


@fallback.post("/models/{name}/predict", include_in_schema=False)
@fallback.post("/models/{name}/jobs", include_in_schema=False)
async def unknown_model(spec: SpecDep) -> None:
    """Reached only for a name with no route of its own: ``SpecDep`` answers 404
    unknown_model; a known name never gets here (its own route comes first)."""
    raise UnknownModel(f"no model named {spec.name!r}")
