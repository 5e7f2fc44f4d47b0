"""One predict request end to end: cache lookup, single-flight, job, wait, merge.

Only the items the cache lacks go to a worker. Identical work already in flight (from this
gateway or another replica) is shared: the flight key in Redis names the job computing it,
and every caller waits on that job's result stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from contract.cache import flight_key
from contract.config import ModelSpec
from contract.jobs import BULK, JobPayload
from contract.tasks import Item, shaping
from gateway.cache import MISSING, CacheMode, Lookup, ResponseCache
from gateway.dispatch import Dispatcher
from gateway.metrics import Metrics
from gateway.validation import Work


@dataclass
class Prediction:
    """The outputs of one request and how they were obtained."""

    outputs: list[Any]
    tokens: list[int]
    """Each item's tokens by the model's tokenizer (what usage reports)."""
    cache: str = "miss"
    timings: dict[str, float] = field(default_factory=dict)


class Inference:
    """Serves predict requests through the cache and the model's workers."""

    def __init__(self, dispatcher: Dispatcher, cache: ResponseCache, metrics: Metrics) -> None:
        self.dispatcher = dispatcher
        self.cache = cache
        self.metrics = metrics

    async def _lookup(
        self,
        spec: ModelSpec,
        inputs: list[Item],
        params: dict[str, Any],
        mode: CacheMode,
        fingerprint: str | None,
    ) -> Lookup:
        if fingerprint is not None and mode is CacheMode.NORMAL:
            return await self.cache.lookup(spec.name, fingerprint, params, inputs)
        return self.cache.miss(inputs)

    async def submit_job(
        self,
        spec: ModelSpec,
        work: Work,
        *,
        request_id: str,
        mode: CacheMode,
        job_ttl_s: int,
        priority: str = "low",
        confirm: bool = True,
    ) -> tuple[str, bool]:
        """Queue an async job (the model's bulk lane); one the cache answers whole is created
        already finished. Returns the job's id and whether it is finished already. Without
        ``confirm`` the caller confirms its writes on a replica itself, once for many jobs
        (``Dispatcher.confirm_writes``)."""
        load = await self.dispatcher.admission.admit(spec, BULK)
        fingerprint = (
            load.fingerprint if spec.cache_ttl_s > 0 and mode is not CacheMode.BYPASS else None
        )
        inputs, params = work.items, work.params
        lookup = await self._lookup(spec, inputs, params, mode, fingerprint)
        cache_ttl = spec.cache_ttl_s if fingerprint is not None else 0
        payload = JobPayload(inputs, params, None, request_id, cache_ttl, priority)
        meta: dict[str, Any] = {"single": work.single}
        stored = shaping(spec.task, inputs, work.request_params)
        if stored is not None:
            meta["shape"] = stored
        if not lookup.missing:
            stored_id = await self.dispatcher.store_finished(
                spec, payload, lookup.outputs, lookup.tokens, meta, job_ttl_s, confirm
            )
            return stored_id, True
        job_id = await self.dispatcher.submit(
            spec, payload, meta=meta, result_ttl_s=job_ttl_s, confirm=confirm
        )
        return job_id, False

    async def _shared(
        self, spec: ModelSpec, payload: JobPayload, fingerprint: str
    ) -> dict[str, Any]:
        """Compute ``payload``, or share the identical computation already in flight."""
        params, texts = payload.parameters, payload.inputs
        flight = flight_key(self.cache.prefix, spec.name, fingerprint, params, texts)
        result = await self.dispatcher.run_shared(spec, payload, flight)
        if result is not None:
            return result
        # The shared job replied before it could be joined: its outputs are in the cache,
        # unless evicted since; then compute them again, alone.
        again = await self.cache.lookup(spec.name, fingerprint, params, texts)
        if not again.missing:
            return {"outputs": again.outputs, "tokens": again.tokens}
        return await self.dispatcher.run(spec, payload)

    async def predict(
        self,
        spec: ModelSpec,
        inputs: list[Item],
        params: dict[str, Any],
        *,
        request_id: str,
        mode: CacheMode = CacheMode.NORMAL,
        priority: str = "low",
    ) -> Prediction:
        deadline = time.time() + spec.timeout_s
        load = await self.dispatcher.admission.admit(spec)
        fingerprint = (
            load.fingerprint if spec.cache_ttl_s > 0 and mode is not CacheMode.BYPASS else None
        )
        use_cache = fingerprint is not None
        lookup = await self._lookup(spec, inputs, params, mode, fingerprint)
        if use_cache:
            hits = len(inputs) - len(lookup.missing)
            self.metrics.observe_cache(spec.name, hits, len(lookup.missing))
        if not lookup.missing:
            return Prediction(lookup.outputs, lookup.tokens, "hit")
        todo = [inputs[i] for i in lookup.missing]
        cache_ttl = spec.cache_ttl_s if use_cache else 0
        payload = JobPayload(todo, params, deadline, request_id, cache_ttl, priority)
        if use_cache and mode is CacheMode.NORMAL:
            assert fingerprint is not None
            result = await self._shared(spec, payload, fingerprint)
        else:
            result = await self.dispatcher.run(spec, payload)
        outputs, tokens = list(lookup.outputs), list(lookup.tokens)
        computed = result.get("tokens") or [0] * len(todo)
        for i, out, n in zip(lookup.missing, result["outputs"], computed, strict=True):
            outputs[i], tokens[i] = out, n
        assert all(o is not MISSING for o in outputs)
        timings: dict[str, float] = {
            k: float(result[k]) for k in ("queue_ms", "inference_ms") if k in result
        }
        self.metrics.observe_job(spec.name, timings.get("queue_ms"), timings.get("inference_ms"))
        return Prediction(outputs, tokens, lookup.status if use_cache else "miss", timings)
