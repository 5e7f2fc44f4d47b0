"""``POST /models/{name}/predict``: synchronous inference for one input or a list."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from contract.jobs import JobPayload
from gateway.api.schemas import ERROR_RESPONSES, PredictRequest, PredictResponse
from gateway.deps import DispatcherDep, SpecDep
from gateway.validation import check_parameters, normalize_inputs

router = APIRouter(tags=["inference"])


@router.post("/models/{name}/predict", response_model=PredictResponse, responses=ERROR_RESPONSES)
async def predict(body: PredictRequest, spec: SpecDep, dispatcher: DispatcherDep, request: Request) -> PredictResponse:
    """Run the model on ``inputs`` and wait for the result (up to the model's ``timeout_s``)."""
    inputs, single = normalize_inputs(spec, body.inputs, spec.max_inputs)
    params = check_parameters(spec, body.parameters)
    deadline = time.time() + spec.timeout_s
    await dispatcher.admit(spec)
    payload = JobPayload(inputs, params, deadline, request.state.request_id)
    job_id = await dispatcher.submit(spec, payload)
    outputs = await dispatcher.wait(job_id, deadline)
    return PredictResponse(model=spec.name, outputs=outputs[0] if single else outputs)
