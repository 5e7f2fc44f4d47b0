"""Property-based fuzzing of the OpenAPI schema against the real stack (gateway, Redis, workers).

Every operation in /openapi.json gets generated requests, valid and invalid (schemathesis'
examples, coverage and fuzzing phases); generated jobs are then read and canceled by their real
ids, and a stateful run chains the operations by the links schemathesis infers. Each answer must
be no 5xx, a documented status with the documented content type, and match the documented
schema; a schema-valid request must be accepted (ST202) and an invalid one refused; an
undeclared method must get 405 with ``Allow``.

``MODELGATE_FUZZ_EXAMPLES`` sets how many examples each operation gets, and how many jobs are
followed: small by default so ``make test`` stays quick, larger under ``make fuzz``.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from schemathesis import Case, HookContext, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import AcceptedNegativeData, Failure
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)

from contract.config import parse_registry
from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.conftest import LIVE_MODELS, Stack, is_present, models_config, wait_until
from tests.modelfactory import TASK_HEADS

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("MODELGATE_FUZZ_EXAMPLES", "20"))
"""Examples per operation (fuzzing phase), and jobs followed; ``make fuzz`` raises it."""

WORKERLESS_MODELS = frozenset({"victim", "slowpoke", "minilm-onnx", "ghost"})
"""Configured without a worker, so they answer 503 model_unavailable by design: their own
routes are not fuzzed, and a generated name of one is steered elsewhere."""


UNKNOWN_MODEL = "no-such-model"

MAX_FUZZ_WAIT_S = 0.5
"""Cap on a generated ``?wait=``: a long-poll on a job that never ends lasts up to 60 s."""

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    use_after_free,
    allow_header_conformance,
]
"""What every answer must satisfy. Each model's schema states its task's inputs and parameters
and its limits (``max_inputs`` as maxItems, ``max_chars`` as maxLength), so a schema-valid body
is accepted; the refusals a schema cannot state are filtered by name below. A deleted job is
gone (``use_after_free``). Not ``unsupported_method``: a miss there fails every operation in the
coverage phase, before fuzzing, so ``test_an_undeclared_method_is_405_with_allow`` checks it on
its own."""


def _openapi() -> dict[str, Any]:
    """The gateway's schema, built in-process from the session's models.yaml (model folders do
    not matter to it): collection needs it before the stack is up.
    ``test_the_served_schema_is_the_fuzzed_one`` checks the running gateway serves the same."""
    placeholders = {name: Path("/models") / name for name in ("tiny", "tiny32", *TASK_HEADS)}
    registry = parse_registry(models_config(placeholders))
    app = create_app(GatewaySettings(), registry=registry)
    return app.openapi()


def _route(case: Case) -> None:
    """Point most requests at a live model, so bodies reach real workers, and leave the rest on
    their generated name (404). A hash of the request decides, so a case replays the same way."""
    name = case.path_parameters["name"]
    if name in LIVE_MODELS:
        return
    pick = zlib.crc32(repr((name, case.body, case.query, case.headers)).encode())
    pick %= len(LIVE_MODELS) + 1
    if pick < len(LIVE_MODELS):
        case.path_parameters["name"] = LIVE_MODELS[pick]
    elif name in WORKERLESS_MODELS:
        case.path_parameters["name"] = UNKNOWN_MODEL


BODY_MODELS = {"/v1/embeddings": "minilm", "/v1/rerank": "tiny-rerank", "/v2/rerank": "tiny-rerank"}
"""A model of the right task for each wire format that names its model in the body."""


def _route_body(case: Case) -> None:
    """As :func:`_route`, for a body's ``model``: mostly one of the route's task."""
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return
    if zlib.crc32(repr((body, case.headers)).encode()) % 4:
        body["model"] = BODY_MODELS[case.operation.path]


def _steer(ctx: HookContext, case: Case) -> Case:
    """Every generated case passes here, whatever the phase: no workerless model, no long poll."""
    if case.path_parameters and "name" in case.path_parameters:
        _route(case)
    if case.operation.path in BODY_MODELS:
        _route_body(case)
    wait = (case.query or {}).get("wait")
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > MAX_FUZZ_WAIT_S:
        case.query["wait"] = MAX_FUZZ_WAIT_S
    return case


def _by_design(ctx: HookContext, failure: Failure, case: Case, response: Response) -> bool:
    """Keep a failure unless it is one of the documented answers a schema cannot state:
    ``/readyz`` (and the Open Inference Protocol's ``/v2/health/ready``) is 503 while a
    configured model has no worker (``ghost`` never has one); a limit in tokens is refused with
    413 (a truncation-off model's input, a question that leaves no room for context); a
    fill-mask model refuses a text without its mask token
    and targets none of which is in its vocabulary (422: the mask token and the vocabulary are
    the model's); ``/v1/embeddings`` refuses token ids beyond the model's vocabulary and
    ``dimensions`` its models.yaml entry does not list."""
    path, status = case.operation.path, response.status_code
    body = response.json() if status >= 400 else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    if path == "/readyz" and status == 503:
        return bool(error.get("code") != "not_ready")
    if path == "/v2/health/ready" and status == 503:
        return bool(body != {"ready": False})
    if path == "/v1/files" and isinstance(failure, AcceptedNegativeData):
        return False  # multipart carries bytes: a file part "123" is a file, not an integer
    if not isinstance(failure, RejectedPositiveData):
        return True
    model = path.split("/")[2] if path.startswith("/models/") else ""
    if status == 413 and " tokens" in error.get("message", ""):
        return False
    message = error.get("message", "") if isinstance(error, dict) else str(error)
    if (path in BODY_MODELS or path == "/v2/models/{name}/infer") and status == 413:
        return False  # limits (max_inputs, max_chars) are the named model's, not the route's
    if path.startswith("/v2/models/{name}") and status == 400:
        return False  # question answering and rerank are not served by the protocol
    if path == "/v2/models/{name}/infer" and status == 422:
        return False  # tensor names, shapes that match the data, and tasks are the model's
    if (
        path == "/v1/embeddings"
        and status == 422
        and ("vocabulary" in message or error.get("param") == "dimensions")
    ):
        return False  # the vocabulary and the Matryoshka sizes are the model's
    return not (
        status == 422 and model == "tiny-mlm" and ("mask token" in message or "targets" in message)
    )


OPENAPI = _openapi()
schema = schemathesis.openapi.from_dict(OPENAPI).exclude(
    path_regex=f"^/models/({'|'.join(WORKERLESS_MODELS)})/"
)
schema.config.generation.update(max_examples=EXAMPLES, database="none")
# 413 is how the API refuses a body over a stated limit (maxItems, maxLength).
schema.config.checks.negative_data_rejection.expected_statuses = [
    *schema.config.checks.negative_data_rejection.expected_statuses,
    "413",
]
schema.hook("map_case")(_steer)
schema.hook("filter_failure")(_by_design)


def test_the_served_schema_is_the_fuzzed_one(stack: Stack) -> None:
    served = httpx.get(f"{stack.url}/openapi.json", timeout=10).json()
    assert served == OPENAPI


def _lapsed(stack: Stack) -> list[str]:
    """Session models whose worker is running but not announced right now."""
    client = Redis.from_url(stack.redis_url)
    try:
        return [
            m
            for m, w in stack.workers.items()
            if w.proc.poll() is None and not is_present(client, m, w.name)
        ]
    finally:
        client.close()


def _call_and_validate(case: Case, stack: Stack) -> Response:
    """The case's answer, held to :data:`CHECKS`. A 503 while a running worker's presence has
    lapsed (a loaded machine stalled it past its TTL) is a liveness matter, tested on its own
    (test_errors, test_chaos): wait for the worker's next beat and ask once more. A worker that
    died or stays silent still fails the case."""
    response = case.call(base_url=stack.url, timeout=90)
    if response.status_code == 503 and (lapsed := _lapsed(stack)):
        wait_until(lambda: not _lapsed(stack), 15, f"workers of {lapsed} to beat again")
        response = case.call(base_url=stack.url, timeout=90)
    case.validate_response(response, checks=CHECKS)
    return response


@schema.parametrize()
def test_every_answer_matches_the_schema(case: Case, stack: Stack) -> None:
    _call_and_validate(case, stack)


@pytest.mark.parametrize(
    ("path", "name", "content"),
    [
        pytest.param(
            "/models/{name}/predict",
            "tiny-strict",
            b'{"inputs": "' + b"word " * 100 + b'"}',
            id="more-tokens-than-a-non-truncating-model-takes",
        ),
        pytest.param(
            "/models/{name}/predict",
            "tiny-pipe",
            b'{"inputs": "' + b"word " * 100 + b'"}',
            id="more-tokens-than-a-non-truncating-pipeline-takes",
        ),
        pytest.param(
            "/models/{name}/predict",
            "minilm",
            b'{"inputs": "\\ud800"}',
            id="lone-surrogate-in-a-json-string",
        ),
        pytest.param("/models/{name}/jobs", "tiny-cls", b'{"inputs": "\xff"}', id="body-not-utf8"),
    ],
)
def test_inputs_the_generator_rarely_reaches(
    stack: Stack, path: str, name: str, content: bytes
) -> None:
    """Generated strings are valid UTF-8 and mostly short; these meet the same checks."""
    path = path.format(name=name)
    case = schema[path]["POST"].Case()
    response = httpx.post(
        stack.url + path,
        content=content,
        timeout=90,
        headers={"Content-Type": "application/json"},
    )
    case.validate_response(response, checks=CHECKS)


@pytest.mark.parametrize("path", sorted(OPENAPI["paths"]))
def test_an_undeclared_method_is_405_with_allow(stack: Stack, path: str) -> None:
    """RFC 9110: a 405 names the methods the resource supports."""
    declared = {m.upper() for m in OPENAPI["paths"][path]}
    ids = {"job_id": "0", "batch_id": "batch_0", "file_id": "file-0", "model_id": LIVE_MODELS[0]}
    url = stack.url + path.format(name=LIVE_MODELS[0], **ids)
    response = httpx.request("TRACE", url, timeout=10)
    assert response.status_code == 405
    body = response.json()
    if path.startswith("/v2") and path != "/v2/rerank":
        assert body == {"error": "method not allowed on this path"}  # the protocol's shape
    else:
        assert body.get("code", body.get("error", {}).get("code")) == "method_not_allowed"
    allowed = {m.strip() for m in response.headers.get("allow", "").split(",") if m.strip()}
    assert allowed >= declared, f"Allow: {response.headers.get('allow')!r}"


def test_generated_jobs_read_and_cancel_per_the_schema(stack: Stack) -> None:
    """Random ids only ever meet 404; here each generated job is read, canceled and read again
    by its real id, in whatever state the race with the worker leaves it."""
    jobs = st.sampled_from(LIVE_MODELS).flatmap(
        lambda name: schema[f"/models/{name}/jobs"]["POST"].as_strategy()
    )

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=jobs)
    def follow(case: Case) -> None:
        accepted = _call_and_validate(case, stack)
        if accepted.status_code in (201, 202):
            _read_cancel_read(stack, accepted.json()["job_id"])

    follow()


def test_a_stateful_run_follows_the_links_and_every_answer_conforms(stack: Stack) -> None:
    """Job submissions of every live model chained with reads and cancels by the OpenAPI links,
    each answer held to the same checks (ST202 included)."""
    base = schema.as_state_machine()

    class Workflow(base):  # type: ignore[valid-type, misc]
        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            # No cache: a submission answered 201 (cached) or 202 (queued) depending on what
            # earlier runs computed would change the transitions Hypothesis replays.
            return {"base_url": stack.url, "timeout": 90, "headers": {"Cache-Control": "no-store"}}

        def validate_response(
            self, response: Response, case: Case, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(response, checks=CHECKS)

    Workflow.run(
        settings=settings(
            max_examples=max(5, EXAMPLES // 2),
            stateful_step_count=5,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )


def _call(
    stack: Stack, method: str, job_id: str, path: str = "/jobs/{job_id}", **query: float
) -> Response:
    case = schema[path][method].Case(path_parameters={"job_id": job_id}, query=query)
    return Response.from_any(case.call_and_validate(base_url=stack.url, checks=CHECKS, timeout=90))


def _read_cancel_read(stack: Stack, job_id: str) -> None:
    """A cancel answered 200 promises the job is canceled and will never run; a DELETE answered
    204 that the job is gone."""
    _call(stack, "GET", job_id)
    canceled = _call(stack, "POST", job_id, "/jobs/{job_id}/cancel")
    after = _call(stack, "GET", job_id, wait=MAX_FUZZ_WAIT_S)
    if canceled.status_code == 200:
        assert canceled.json()["status"] == "canceled", canceled.json()
        assert after.json()["status"] == "canceled", (canceled.json(), after.json())
    deleted = _call(stack, "DELETE", job_id)
    if deleted.status_code == 204:
        assert _call(stack, "GET", job_id).status_code == 404
