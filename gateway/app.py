"""The FastAPI application: ``create_app(settings)``; ``from_env()`` for uvicorn ``--factory``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.routing import APIRoute

from contract.config import Registry, load_registry
from contract.jobs import Keys
from contract.logs import configure_logging
from gateway.api import (
    batches,
    dashboard,
    docs,
    files,
    jobs,
    models,
    oip,
    openai_compat,
    predict,
    rerank,
    routes,
    service,
)
from gateway.api.schemas import model_schemas
from gateway.api.service import VERSION
from gateway.auth import ApiKeyMiddleware, load_keys
from gateway.batches import BatchStore
from gateway.cache import ResponseCache
from gateway.dispatch import Dispatcher
from gateway.errors import ErrorDialects, install_error_handlers
from gateway.files import FileStore
from gateway.hotpath import PredictHotPath, hot_routes
from gateway.inference import Inference
from gateway.jobs import JobStore
from gateway.metrics import Metrics
from gateway.middleware import BodyLimitMiddleware, RequestContextMiddleware
from gateway.quotas import Quotas
from gateway.settings import GatewaySettings

log = logging.getLogger("modelgate.gateway")

DESCRIPTION = """Transformers models behind one API. Each model in models.yaml is served by its own
worker processes; this gateway validates requests and routes them over Redis.
Every error answers `{"error": {"code", "message"}}`."""


def create_app(
    settings: GatewaySettings,
    *,
    registry: Registry | None = None,
    dispatcher: Dispatcher | None = None,
) -> FastAPI:
    """Build the app. Resources not given are opened in the lifespan and closed after it."""
    registry = registry or load_registry(settings.config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if dispatcher is None:
                opened = Dispatcher(
                    settings.redis_url,
                    Keys(settings.prefix),
                    cache_url=settings.cache_url,
                    max_connections=settings.redis_max_connections,
                    pool_timeout_s=settings.redis_pool_timeout_s,
                    coalesce=settings.coalesce,
                    replica_acks=settings.acks,
                )
                stack.push_async_callback(opened.close)
                _attach(app, opened, settings)
            flusher = asyncio.create_task(_flush_recent(app))
            stack.push_async_callback(_stop_flushing, flusher, app)
            yield

    app = FastAPI(
        title="modelgate",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by gateway.api.docs, with assets that need no CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = Metrics(frozenset(spec.name for spec in registry.models))
    # Built once: a model's schemas are a pydantic model build (about 1 ms), not per request.
    app.state.model_schemas = {spec.name: model_schemas(spec) for spec in registry.models}
    if dispatcher is not None:
        _attach(app, dispatcher, settings)
    dialects = ErrorDialects()
    dialects.add("/v1/", openai_compat.openai_error)
    dialects.add("/v2", oip.oip_error)
    dialects.add("/v2/rerank", rerank.cohere_error)
    app.state.error_dialects = dialects
    install_error_handlers(app)
    docs.install_docs(app)
    dashboard.install_dashboard(app)
    adapters = (openai_compat.router, files.router, batches.router, rerank.router, oip.router)
    for router in (service.router, models.router, jobs.router, *adapters):
        app.include_router(router)
    predict_routes: dict[str, APIRoute] = {}
    for spec in registry.models:
        predict_router = predict.model_router(spec)
        app.include_router(predict_router)
        route = predict_router.routes[-1]
        assert isinstance(route, APIRoute)
        predict_routes[spec.name] = route
        app.include_router(jobs.model_router(spec))
    app.include_router(predict.classic_router(registry))
    app.include_router(routes.fallback)
    # Innermost of the gateway's own middlewares: the body limit, API keys and request ids
    # apply to the predict calls it answers (see gateway.hotpath).
    app.add_middleware(PredictHotPath, fastapi=app, routes=hot_routes(registry, predict_routes))
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        dialects=dialects,
        larger={"/v1/files": max(settings.max_body_bytes, settings.batch_max_file_bytes + 65536)},
    )
    keys = load_keys(settings.api_keys, settings.api_keys_file)
    for policy in keys.values():
        unknown = sorted((policy.models or frozenset()) - {m.name for m in registry.models})
        if unknown:
            raise ValueError(f"API key {policy.id!r}: models= names unknown models {unknown}")
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys, dialects=dialects)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    return app


def _attach(app: FastAPI, dispatcher: Dispatcher, settings: GatewaySettings) -> None:
    app.state.dispatcher = dispatcher
    cache = ResponseCache(dispatcher.connections.cache, settings.prefix)
    app.state.inference = Inference(dispatcher, cache, app.state.metrics)
    app.state.jobs = JobStore(dispatcher, settings.job_ttl_s)
    keys = Keys(settings.prefix)
    app.state.files = FileStore(dispatcher.conn, keys, settings.job_ttl_s)
    app.state.batches = BatchStore(dispatcher.conn, keys, app.state.jobs, settings.job_ttl_s)
    app.state.quotas = Quotas(dispatcher.conn, keys)


FLUSH_EVERY_S = 1.0
"""How often a gateway process adds its counts to the recent-activity buckets."""


async def _flush_recent(app: FastAPI) -> None:
    dispatcher: Dispatcher = app.state.dispatcher
    while True:
        await asyncio.sleep(FLUSH_EVERY_S)
        try:
            await app.state.metrics.flush(dispatcher.conn, dispatcher.keys)
        except Exception:  # the loop must outlive any one failure
            log.exception("flushing recent activity failed")


async def _stop_flushing(flusher: asyncio.Task[None], app: FastAPI) -> None:
    flusher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flusher
    with contextlib.suppress(Exception):
        await app.state.metrics.flush(app.state.dispatcher.conn, app.state.dispatcher.keys)


def from_env() -> FastAPI:
    """Zero-argument factory for ``uvicorn --factory gateway.app:from_env``."""
    settings = GatewaySettings()
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings)
