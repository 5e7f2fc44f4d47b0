"""``POST /models/{name}/predict``: synchronous inference for one input or a list."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gateway.api.schemas import ERROR_RESPONSES, PredictRequest, PredictResponse
from gateway.cache import CacheMode
from gateway.deps import CacheControl, InferenceDep, SpecDep
from gateway.validation import check_parameters, normalize_inputs

router = APIRouter(tags=["inference"])


@router.post("/models/{name}/predict", response_model=PredictResponse, responses=ERROR_RESPONSES)
async def predict(
    body: PredictRequest,
    spec: SpecDep,
    inference: InferenceDep,
    request: Request,
    response: Response,
    cache_control: CacheControl = None,
) -> PredictResponse:
    """Run the model on ``inputs`` and wait for the result (up to the model's ``timeout_s``).
    Items already in the response cache are not recomputed (``X-Cache: hit | partial | miss``)."""
    inputs, single = normalize_inputs(spec, body.inputs, spec.max_inputs)
    params = check_parameters(spec, body.parameters)
    result = await inference.predict(
        spec,
        inputs,
        params,
        request_id=request.state.request_id,
        mode=CacheMode.from_header(cache_control),
        priority=body.priority,
    )
    response.headers["X-Cache"] = result.cache
    for key, header in (("queue_ms", "X-Queue-Time-Ms"), ("inference_ms", "X-Inference-Time-Ms")):
        if key in result.timings:
            response.headers[header] = f"{result.timings[key]:.1f}"
    return PredictResponse(model=spec.name, outputs=result.outputs[0] if single else result.outputs)
