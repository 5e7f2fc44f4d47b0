"""``modelgate k8s``: every generated object validates strictly (Kubernetes objects against the
schemas kubernetes-validate ships, KEDA's against the CRDs of KEDA's own repository in
tests/data/keda), the ScaledObjects read the very queues the gateway enqueues to, the layout is
what models.yaml says (GPU models in the gpu overlay, scale to zero, grace periods), the
repository's deploy/k8s is what the command writes now, and ``modelgate probe worker`` follows
this host's heartbeat in a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from redis import Redis
from rq.queue import Queue

from contract.config import load_registry
from contract.jobs import BULK, INTERACTIVE, LANES, Keys
from gateway.app import create_app
from gateway.dispatch import Dispatcher
from gateway.settings import GatewaySettings
from modelgate.cli import main
from modelgate.redis_server import RedisServer, free_port
from workers.presence import Presence

ROOT = Path(__file__).resolve().parents[2]
KEDA_CRDS = ROOT / "tests" / "data" / "keda"
KUBERNETES_VERSIONS = ("1.31", "1.35")
"""Validated against both: an older release still widely run, and the one KEDA 2.20 builds on."""

MODELS = [
    {
        "name": "cpu-a",
        "task": "text-classification",
        "source": {"path": "models/a"},
        "replicas": 3,
        "timeout_s": 45.5,
    },
    {
        "name": "lazy_b",
        "task": "feature-extraction",
        "source": {"path": "models/b"},
        "scale_to_zero": True,
        "timeout_s": 90,
        "max_batch_size": 8,
    },
    {
        "name": "gpu-c",
        "task": "feature-extraction",
        "source": {"hub": "org/model", "revision": "abc123"},
        "device": "cuda",
        "threads": 2,
        "timeout_s": 120,
    },
]


def write_config(where: Path, models: list[dict[str, Any]] = MODELS) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def generate(tmp_path: Path, *flags: str, config: Path | None = None) -> Path:
    out = tmp_path / "k8s"
    config = config or write_config(tmp_path)
    assert main(["k8s", "--config", str(config), "--out", str(out), *flags]) == 0
    return out


def documents(out: Path) -> dict[str, list[dict[str, Any]]]:
    return {
        p.relative_to(out).as_posix(): [d for d in yaml.safe_load_all(p.read_text()) if d]
        for p in sorted(out.rglob("*.yaml"))
    }


def objects(out: Path, kind: str | None = None) -> list[dict[str, Any]]:
    found = [
        d
        for rel, docs in documents(out).items()
        for d in docs
        if not rel.endswith("kustomization.yaml")
    ]
    return [d for d in found if kind is None or d["kind"] == kind]


def by_name(out: Path, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects(out, kind)}


# Validation -------------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """A CRD's OpenAPI schema as the API server applies it: fields it does not declare are
    refused (kubectl's strict field validation) instead of silently pruned."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {k: _strict(v) for k, v in schema.items()}
    open_ended = "additionalProperties" in schema or schema.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if "properties" in schema and not open_ended:
        strict["additionalProperties"] = False
    return strict


@cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    name = {"ScaledObject": "scaledobjects", "TriggerAuthentication": "triggerauthentications"}
    crd = yaml.safe_load((KEDA_CRDS / f"keda.sh_{name[kind]}.yaml").read_text())
    assert crd["spec"]["names"]["kind"] == kind
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    assert version["served"]
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def validate(obj: dict[str, Any]) -> None:
    """Raise when ``obj`` is not a valid object of its kind."""
    if obj["apiVersion"].startswith("keda.sh/"):
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        crd_validator(obj["kind"]).validate(obj)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


LAYOUTS = {
    "default": (),
    "fetch": ("--models", "fetch"),
    "volume": ("--models", "volume", "--models-claim", "hf"),
    "password-tls": ("--redis-url", "rediss://user:pw@redis.example.com:6380/2"),
    "sentinel": ("--redis-url", "redis+sentinel://:pw@s1:26379,s2:26379/mymaster/1"),
}


@pytest.mark.parametrize("flags", LAYOUTS.values(), ids=list(LAYOUTS))
def test_every_object_validates_strictly(tmp_path: Path, flags: tuple[str, ...]) -> None:
    out = generate(tmp_path, *flags)
    found = objects(out)
    assert {o["kind"] for o in found} >= {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ScaledObject",
        "Secret",
    }
    for obj in found:
        validate(obj)


def test_the_validators_refuse_what_the_cluster_would(tmp_path: Path) -> None:
    out = generate(tmp_path)
    scaled = objects(out, "ScaledObject")[0]
    unknown = {**scaled, "spec": {**scaled["spec"], "minReplicas": 1}}
    with pytest.raises(jsonschema.ValidationError):
        validate(unknown)
    trigger = {**scaled["spec"]["triggers"][0], "metadata": {"listLength": 64}}
    not_text = {**scaled, "spec": {**scaled["spec"], "triggers": [trigger]}}
    with pytest.raises(jsonschema.ValidationError):
        validate(not_text)  # KEDA takes every metadata value as a string
    worker = by_name(out, "Deployment")["modelgate-worker-cpu-a"]
    template = worker["spec"]["template"]
    typo = {**template, "spec": {**template["spec"], "terminationGracePeriod": 10}}
    wrong = {**worker, "spec": {**worker["spec"], "template": typo}}
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriod"):
        validate(wrong)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (kustomize)")
@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_each_overlay_builds_with_kustomize(tmp_path: Path, overlay: str) -> None:
    out = generate(tmp_path)
    built = subprocess.run(
        ["kubectl", "kustomize", str(out / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    docs = list(yaml.safe_load_all(built.stdout))
    deployments = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "Deployment")
    workers = {
        "cpu": ["modelgate-worker-cpu-a", "modelgate-worker-lazy-b"],
        "gpu": ["modelgate-worker-gpu-c"],
    }
    assert deployments == sorted(["modelgate-gateway", *workers[overlay]])
    assert "Secret" not in {d["kind"] for d in docs}  # the user's Secret is never overwritten
    for doc in docs:
        validate(doc)


# What models.yaml says --------------------------------------------------------------------------


def test_scaled_objects_read_each_models_two_queues(tmp_path: Path) -> None:
    out = generate(tmp_path, "--prefix", "acme")
    scaled = by_name(out, "ScaledObject")
    for model in ("cpu-a", "lazy_b", "gpu-c"):
        name = "modelgate-worker-" + model.replace("_", "-")
        assert scaled[name]["spec"]["scaleTargetRef"]["name"] == name
        triggers = scaled[name]["spec"]["triggers"]
        assert [t["metadata"]["listName"] for t in triggers][:2] == [
            Keys("acme").queue_key(model, INTERACTIVE),
            Keys("acme").queue_key(model, BULK),
        ]
    for deployment in objects(out, "Deployment"):
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "MODELGATE_PREFIX", "value": "acme"} in env


def test_the_queue_names_are_rqs_keys_for_the_gateways_queues(tmp_path: Path) -> None:
    # The gateway builds its RQ queues from Keys.queue (gateway.dispatch); RQ keeps each at
    # Queue.key, the list KEDA must measure.
    out = generate(tmp_path)
    scaled = by_name(out, "ScaledObject")["modelgate-worker-cpu-a"]
    names = [t["metadata"]["listName"] for t in scaled["spec"]["triggers"]]
    queues = [Queue(Keys().queue("cpu-a", lane), connection=Redis()) for lane in LANES]
    assert names == [q.key for q in queues]


def test_scale_to_zero_gives_a_minimum_of_zero_and_only_then(tmp_path: Path) -> None:
    out = generate(tmp_path, "--max-replicas", "5")
    spec = {n: o["spec"] for n, o in by_name(out, "ScaledObject").items()}
    assert spec["modelgate-worker-lazy-b"]["minReplicaCount"] == 0
    assert spec["modelgate-worker-cpu-a"]["minReplicaCount"] == 3  # its replicas
    assert spec["modelgate-worker-gpu-c"]["minReplicaCount"] == 1  # replicas: auto
    assert {s["maxReplicaCount"] for s in spec.values()} == {5}
    for s in spec.values():  # one queued job wakes a model scaled to zero
        assert {t["metadata"]["activationListLength"] for t in s["triggers"]} == {"0"}
    # ... and a job being run keeps it awake: its started registries are triggers too.
    keys = Keys("modelgate")
    lazy = {
        t["name"]: t["metadata"]["listName"] for t in spec["modelgate-worker-lazy-b"]["triggers"]
    }
    assert lazy == {
        "interactive": keys.queue_key("lazy_b", INTERACTIVE),
        "bulk": keys.queue_key("lazy_b", BULK),
        "interactive-running": keys.started_key("lazy_b", INTERACTIVE),
        "bulk-running": keys.started_key("lazy_b", BULK),
    }
    assert [t["name"] for t in spec["modelgate-worker-cpu-a"]["triggers"]] == [
        "interactive",
        "bulk",
    ]


def test_a_cuda_model_gets_a_gpu_and_lands_only_in_the_gpu_overlay(tmp_path: Path) -> None:
    out = generate(tmp_path)
    docs = documents(out)
    gpu_files = [r for r in docs if r.startswith("overlays/gpu/worker-")]
    cpu_files = [r for r in docs if r.startswith("overlays/cpu/worker-")]
    assert gpu_files == ["overlays/gpu/worker-gpu-c.yaml"]
    assert sorted(cpu_files) == [
        "overlays/cpu/worker-cpu-a.yaml",
        "overlays/cpu/worker-lazy-b.yaml",
    ]
    for overlay, files in (("gpu", gpu_files), ("cpu", cpu_files)):
        listed = docs[f"overlays/{overlay}/kustomization.yaml"][0]["resources"]
        assert listed == ["../../base", *(f.rsplit("/", 1)[1] for f in sorted(files))]
    deployments = by_name(out, "Deployment")
    gpu = deployments["modelgate-worker-gpu-c"]["spec"]["template"]["spec"]
    assert gpu["containers"][0]["image"] == "modelgate-worker:cuda"
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["containers"][0]["resources"]["requests"]["cpu"] == "2"  # its threads
    assert gpu["containers"][0]["command"][-2:] == ["--threads", "2"]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["tolerations"][0]["key"] == "nvidia.com/gpu"
    for name in ("modelgate-worker-cpu-a", "modelgate-worker-lazy-b"):
        cpu = deployments[name]["spec"]["template"]["spec"]
        assert cpu["containers"][0]["image"] == "modelgate-worker:cpu"
        assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
        assert "nodeSelector" not in cpu and "tolerations" not in cpu
        assert cpu["containers"][0]["command"][-2:] == ["--threads", "1"]


def test_grace_periods_cover_a_batch_at_the_models_timeout(tmp_path: Path) -> None:
    out = generate(tmp_path)
    deployments = by_name(out, "Deployment")
    for model in MODELS:
        name = "modelgate-worker-" + str(model["name"]).replace("_", "-")
        pod = deployments[name]["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= float(model["timeout_s"])  # type: ignore[arg-type]
        assert pod["containers"][0]["command"][:4] == [
            "modelgate",
            "worker",
            "--model",
            model["name"],
        ]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["MODELGATE_MODEL"]["value"] == model["name"]
    gateway = deployments["modelgate-gateway"]["spec"]["template"]["spec"]
    command = gateway["containers"][0]["command"]
    drain = int(command[command.index("--graceful-timeout") + 1])
    assert drain >= 120  # the longest timeout_s: a waiting sync request can finish
    assert gateway["terminationGracePeriodSeconds"] > drain


def test_pods_read_models_yaml_and_redis_from_the_cluster(tmp_path: Path) -> None:
    out = generate(tmp_path, "--redis-url-secret", "my-redis")
    config = objects(out, "ConfigMap")[0]
    assert config["data"]["models.yaml"] == (tmp_path / "models.yaml").read_text()
    for deployment in objects(out, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["MODELGATE_CONFIG"]["value"] == "/etc/modelgate/models.yaml"
        url = env["MODELGATE_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert url == {"name": "my-redis", "key": "redis-url", "optional": False}
        assert env["MODELGATE_CACHE_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
        mount = next(m for m in container["volumeMounts"] if m["name"] == "models-yaml")
        assert mount["mountPath"] == "/etc/modelgate/models.yaml"
        assert mount["subPath"] == "models.yaml"  # the image's /etc/modelgate/models stays


def test_probes_never_take_the_gateway_out_for_one_models_workers(tmp_path: Path) -> None:
    out = generate(tmp_path)
    gateway = by_name(out, "Deployment")["modelgate-gateway"]["spec"]["template"]["spec"]
    container = gateway["containers"][0]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    worker = by_name(out, "Deployment")["modelgate-worker-lazy-b"]["spec"]["template"]["spec"]
    probe_worker = ["modelgate", "probe", "worker", "--model", "lazy_b"]
    assert worker["containers"][0]["startupProbe"]["exec"]["command"] == probe_worker
    # Liveness passes while Redis is away: restarting every worker would not bring it back.
    liveness = worker["containers"][0]["livenessProbe"]["exec"]["command"]
    assert liveness == [*probe_worker, "--redis-down-ok"]


def test_models_fetched_by_an_init_container_or_read_from_a_claim(tmp_path: Path) -> None:
    out = generate(tmp_path / "fetch", "--models", "fetch")
    pod = by_name(out, "Deployment")["modelgate-worker-gpu-c"]["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["command"] == [
        *("modelgate", "fetch", "--config", "/etc/modelgate/models.yaml", "--model", "gpu-c")
    ]
    cache_mounts = [m for m in init["volumeMounts"] if m["name"] == "hf-cache"]
    worker_mounts = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "hf-cache"]
    assert (
        cache_mounts
        == worker_mounts
        == [{"name": "hf-cache", "mountPath": "/var/cache/modelgate/hf"}]
    )
    assert {"name": "hf-cache", "emptyDir": {}} in pod["volumes"]
    out = generate(tmp_path / "volume", "--models", "volume", "--models-claim", "hf")
    pod = by_name(out, "Deployment")["modelgate-worker-gpu-c"]["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert {
        "name": "hf-cache",
        "persistentVolumeClaim": {"claimName": "hf", "readOnly": True},
    } in pod["volumes"]
    out = generate(tmp_path / "baked")
    pod = by_name(out, "Deployment")["modelgate-worker-gpu-c"]["spec"]["template"]["spec"]
    assert "initContainers" not in pod and len(pod["volumes"]) == 1


# Redis as KEDA reaches it -----------------------------------------------------------------------


def test_a_password_is_read_from_the_secret_and_never_written(tmp_path: Path) -> None:
    out = generate(tmp_path, "--redis-url", "rediss://:s3cr3t-pw@redis.example.com:6380/2")
    assert "s3cr3t-pw" not in "".join(p.read_text() for p in out.rglob("*.yaml"))
    auth = objects(out, "TriggerAuthentication")[0]
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "modelgate-redis", "key": "redis-password"}
    ]
    assert "keda-auth.yaml" in documents(out)["base/kustomization.yaml"][0]["resources"]
    for scaled in objects(out, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["type"] == "redis"
            assert trigger["authenticationRef"] == {"name": "modelgate-redis"}
            meta = trigger["metadata"]
            assert (meta["address"], meta["databaseIndex"], meta["enableTLS"]) == (
                "redis.example.com:6380",
                "2",
                "true",
            )
    secret = objects(out, "Secret")[0]["stringData"]
    assert secret["redis-url"] == "rediss://:change-me@redis.example.com:6380/2"
    assert secret["redis-password"] == "change-me"


def test_no_password_no_trigger_authentication_and_a_whole_service_name(tmp_path: Path) -> None:
    out = generate(tmp_path, "--namespace", "ml")
    assert objects(out, "TriggerAuthentication") == []
    for scaled in objects(out, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert "authenticationRef" not in trigger
            # KEDA's operator runs in its own namespace: redis alone would not resolve there
            assert trigger["metadata"]["address"] == "redis.ml.svc:6379"
    assert {o["metadata"]["namespace"] for o in objects(out) if o["kind"] != "Namespace"} == {"ml"}


def test_a_sentinel_url_gets_the_sentinel_scaler(tmp_path: Path) -> None:
    url = "redis+sentinel://:pw@s1:26379,s2.example.com:26380/mymaster/1?sentinel_password=sp"
    out = generate(tmp_path, "--redis-url", url)
    trigger = objects(out, "ScaledObject")[0]["spec"]["triggers"][0]
    assert trigger["type"] == "redis-sentinel"
    assert trigger["metadata"]["addresses"] == "s1.modelgate.svc:26379,s2.example.com:26380"
    assert trigger["metadata"]["sentinelMaster"] == "mymaster"
    assert trigger["metadata"]["databaseIndex"] == "1"
    refs = objects(out, "TriggerAuthentication")[0]["spec"]["secretTargetRef"]
    assert {r["parameter"]: r["key"] for r in refs} == {
        "password": "redis-password",
        "sentinelPassword": "redis-sentinel-password",
    }
    secret = objects(out, "Secret")[0]["stringData"]
    assert secret["redis-url"] == (
        "redis+sentinel://:change-me@s1:26379,s2.example.com:26380/mymaster/1"
        "?sentinel_password=change-me"
    )
    assert secret["redis-sentinel-password"] == "change-me"


# The command itself -----------------------------------------------------------------------------


def test_the_committed_manifests_are_what_models_yaml_gives_now(tmp_path: Path) -> None:
    """deploy/k8s never drifts from models.yaml: regenerate with the command the docs give
    (`modelgate k8s --config models.yaml --out deploy/k8s`) when this fails."""
    out = generate(tmp_path, config=ROOT / "models.yaml")
    committed = ROOT / "deploy" / "k8s"
    ours = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    theirs = {
        p.relative_to(committed).as_posix(): p.read_bytes()
        for p in committed.rglob("*")
        if p.is_file()
    }
    assert sorted(theirs) == sorted(ours)
    assert [rel for rel in ours if ours[rel] != theirs[rel]] == []


def test_a_rerun_rewrites_nothing_and_drops_a_removed_models_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = generate(tmp_path)
    before = {p: p.read_bytes() for p in out.rglob("*.yaml")}
    (out / "overlays" / "cpu" / "mine.yaml").write_text("kind: Mine\n")  # the user's own file
    capsys.readouterr()
    generate(tmp_path)
    assert "(0 written, 0 removed)" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in before} == before
    generate(tmp_path, config=write_config(tmp_path, [m for m in MODELS if m["name"] != "cpu-a"]))
    assert not (out / "overlays" / "cpu" / "worker-cpu-a.yaml").exists()
    assert (out / "overlays" / "cpu" / "mine.yaml").read_text() == "kind: Mine\n"
    resources = documents(out)["overlays/cpu/kustomization.yaml"][0]["resources"]
    assert resources == ["../../base", "worker-lazy-b.yaml"]


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_bad_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_config(tmp_path, [{**MODELS[0], "timeout_s": -1}, {**MODELS[1], "bogus": 1}])
    err = one_line_error(capsys, ["k8s", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert "models[0].timeout_s: must be greater than 0" in err
    assert "models[1].bogus: unknown key" in err
    assert not (tmp_path / "o").exists()
    err = one_line_error(capsys, ["k8s", "--config", str(tmp_path / "absent.yaml")])
    assert "cannot read file" in err


def test_an_unwritable_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    err = one_line_error(capsys, ["k8s", "--config", str(config), "--out", str(blocker)])
    assert err.startswith("modelgate k8s: cannot write ") and str(blocker) in err


def test_a_redis_url_keda_cannot_use_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    for url in ("unix:///run/redis.sock", "redis+sentinel://s1:26379"):
        argv = ["k8s", "--config", str(config), "--out", str(tmp_path / "o"), "--redis-url", url]
        assert one_line_error(capsys, argv).startswith("modelgate k8s: --redis-url: ")


def test_a_gpu_index_is_told_not_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, [{**MODELS[2], "device": "cuda:1"}])
    out = generate(tmp_path, config=config)
    assert "gpu-c: device cuda:1 names a GPU by index" in capsys.readouterr().err
    assert documents(out)["overlays/gpu/kustomization.yaml"][0]["resources"][1:] == [
        "worker-gpu-c.yaml"
    ]


def test_help_explains_the_layout(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["k8s", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "kubectl apply -k" in text and "overlays/gpu" in text and "--max-replicas" in text


def test_fetch_takes_only_the_named_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, MODELS[:2])
    assert main(["fetch", "--config", str(config), "--model", "lazy_b"]) == 0
    said = capsys.readouterr().out
    assert "lazy_b: local" in said and "cpu-a" not in said
    assert main(["fetch", "--config", str(config), "--model", "nope"]) == 1
    assert "no model named nope" in capsys.readouterr().err


# Against a real Redis ---------------------------------------------------------------------------


@pytest.fixture
def keys(redis_server: RedisServer) -> Iterator[Keys]:
    keys = Keys(f"k8s-{uuid.uuid4().hex[:8]}")
    yield keys
    client = Redis.from_url(redis_server.url)
    stale = client.keys(f"*{keys.prefix}:*")
    # The jobs queued under the prefix are keyed by their id alone: found through the queues.
    for key in [k for k in stale if client.type(k) == b"list"]:
        for job_id in client.lrange(key, 0, -1):
            stale += [f"rq:job:{job_id.decode()}", f"rq:results:{job_id.decode()}"]
    if stale:
        client.delete(*stale)
    client.close()


@pytest.mark.integration
async def test_the_gateway_enqueues_where_keda_looks(
    tmp_path: Path, redis_server: RedisServer, keys: Keys
) -> None:
    config = write_config(tmp_path, MODELS[:1])
    out = generate(tmp_path, "--prefix", keys.prefix)
    triggers = objects(out, "ScaledObject")[0]["spec"]["triggers"]
    interactive, bulk = (t["metadata"]["listName"] for t in triggers)
    client = Redis.from_url(redis_server.url)
    Presence(client, keys, "cpu-a", "cpu-a-fake", {"device": "cpu"}).renew()
    settings = GatewaySettings(config=str(config), redis_url=redis_server.url, prefix=keys.prefix)  # type: ignore[call-arg]
    dispatcher = Dispatcher(redis_server.url, keys)
    app = create_app(settings, registry=load_registry(config), dispatcher=dispatcher)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw"
    ) as gw:
        accepted = await gw.post("/models/cpu-a/jobs", json={"inputs": ["later"]})
        assert accepted.status_code == 202, accepted.text
        assert client.llen(bulk) == 1
        waiting = asyncio.create_task(gw.post("/models/cpu-a/predict", json={"inputs": ["now"]}))
        for _ in range(200):
            if client.llen(interactive):
                break
            await asyncio.sleep(0.02)
        assert client.llen(interactive) == 1
        waiting.cancel()  # no worker takes it: the caller gives up
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    await dispatcher.close()
    client.close()


def probe(capsys: pytest.CaptureFixture[str], model: str) -> tuple[int, str]:
    code = main(["probe", "worker", "--model", model])
    return code, capsys.readouterr().err


@pytest.mark.integration
def test_the_worker_probe_follows_this_hosts_heartbeat(
    redis_server: RedisServer,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MODELGATE_REDIS_URL", redis_server.url)
    monkeypatch.setenv("MODELGATE_PREFIX", keys.prefix)
    code, err = probe(capsys, "minilm")
    assert code == 1 and err.count("\n") == 1
    assert f"no live worker of model 'minilm' on this host ({socket.gethostname()})" in err
    client = Redis.from_url(redis_server.url)
    elsewhere = {"host": f"x{socket.gethostname()}"}
    Presence(client, keys, "minilm", "minilm-there", {"device": "cpu", **elsewhere}).renew()
    assert probe(capsys, "minilm")[0] == 1  # another pod's worker
    here = Presence(client, keys, "minilm", "minilm-here", {"device": "cpu"})
    here.start()
    assert probe(capsys, "minilm") == (0, "")
    here.stop()  # withdrawn: this host serves the model no more
    assert probe(capsys, "minilm")[0] == 1
    client.close()


def test_the_worker_probe_says_when_redis_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODELGATE_REDIS_URL", f"redis://:pw@127.0.0.1:{free_port()}/0")
    code, err = probe(capsys, "minilm")
    assert code == 1 and err.count("\n") == 1
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in err and "pw@" not in err
    # A liveness probe passes while Redis is away; the same probe fails on a Redis that answers
    # without this host's heartbeat (the test above).
    assert main(["probe", "worker", "--model", "minilm", "--redis-down-ok"]) == 0


KEDA_REDIS_METADATA = {
    *("address", "addresses", "username", "password", "sentinelUsername", "sentinelPassword"),
    *("sentinelMaster", "host", "hosts", "port", "ports", "unsafeSsl", "listLength"),
    *("activationListLength", "listName", "databaseIndex", "enableTLS"),
}
"""The trigger metadata names KEDA v2.20.2's redis scalers read (``keda:"name=..."`` tags of
``redisConnectionInfo`` and ``redisMetadata`` in pkg/scalers/redis_scaler.go). The CRD allows
any key, and KEDA ignores one it does not know: a misspelled name would pass every schema."""


@pytest.mark.parametrize("url", ["redis://redis:6379/0", "redis+sentinel://s1:26379,s2/mg/1"])
def test_trigger_metadata_uses_only_names_keda_reads(tmp_path: Path, url: str) -> None:
    out = generate(tmp_path, "--redis-url", url)
    for scaled in objects(out, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert set(trigger["metadata"]) <= KEDA_REDIS_METADATA, trigger
