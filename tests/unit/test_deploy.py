"""The deployment files: Dockerfiles parsed instruction by instruction, docker-compose.yml parsed
as YAML, checked for the properties a deployment relies on (non-root images, a gateway without
torch, cached dependency layers, scalable workers, a GPU reservation, restart policies, a
read-only models.yaml). ``docker compose config`` validates the compose file where a client can."""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from redis import Redis

from contract.config import load_registry
from contract.jobs import Keys
from modelgate.redis_server import RedisServer
from workers.presence import Presence

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contract", "gateway", "workers", "modelgate")
CONFIG_IN_CONTAINER = "/etc/modelgate/models.yaml"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str

    def words(self) -> list[str]:
        """The arguments of an exec-form (JSON) or shell-form instruction, without flags."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text.split("CMD", 1)[1].strip() if "CMD" in text else text
        words = json.loads(text) if text.startswith("[") else shlex.split(text)
        return [w for w in words if not w.startswith("--")]


def parse_dockerfile(path: Path) -> list[list[Instruction]]:
    """The instructions of each build stage (a stage starts at FROM), in order."""
    stages: list[list[Instruction]] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM" or not stages:
            stages.append([])
        stages[-1].append(instruction)
    return stages


def _logical_lines(text: str) -> list[str]:
    lines, pending = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, also inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    return lines


def final_stage(name: str) -> list[Instruction]:
    return parse_dockerfile(ROOT / name)[-1]


def of_kind(stage: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in stage if i.keyword == keyword]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def worker_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if name.startswith("worker-")}


def served_model(service: dict[str, Any]) -> str:
    command = service["command"]
    assert command[:3] == ["modelgate", "worker", "--model"], command
    return str(command[3])


# Dockerfiles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile.gateway", "Dockerfile.worker"])
def test_final_stage_runs_as_a_non_root_user(dockerfile: str) -> None:
    users = of_kind(final_stage(dockerfile), "USER")
    assert users, f"{dockerfile} never switches away from root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0")


def test_gateway_healthcheck_probes_healthz_with_python_only() -> None:
    (check,) = of_kind(final_stage("Dockerfile.gateway"), "HEALTHCHECK")
    words = check.words()
    assert words[:2] == ["python", "-c"]
    assert "/healthz" in words[2]
    compile(words[2], "HEALTHCHECK", "exec")  # a syntax error would mark every container sick


def test_gateway_image_installs_neither_torch_nor_the_worker_extra() -> None:
    stage = final_stage("Dockerfile.gateway")
    runs = " ".join(i.args for i in of_kind(stage, "RUN")).lower()
    for forbidden in ("torch", "transformers", "[worker]", "optional-dependencies", "'worker'"):
        assert forbidden not in runs
    assert "['project']['dependencies']" in runs
    copied = " ".join(i.args for i in of_kind(stage, "COPY"))
    assert "workers" not in copied.split()


def test_base_dependencies_of_pyproject_have_no_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {
        re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]
    }
    assert not names & {"torch", "transformers", "sentence-transformers", "accelerate"}
    worker = {
        re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower()
        for d in project["optional-dependencies"]["worker"]
    }
    assert {"torch", "transformers"} <= worker


def dependency_closure(requirements: list[str]) -> set[str]:
    """Every distribution the requirements pull in, from the installed packages' metadata."""
    seen: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        req = pending.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            pending += [Requirement(r) for r in importlib.metadata.requires(req.name) or []]
    return seen


def test_gateway_dependency_set_pulls_in_no_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    closure = dependency_closure(project["dependencies"])
    assert {"fastapi", "uvicorn", "redis", "rq"} <= closure
    assert not closure & {"torch", "transformers", "tokenizers", "safetensors", "numpy"}


@pytest.mark.parametrize("dockerfile", ["Dockerfile.gateway", "Dockerfile.worker"])
def test_dependency_layer_comes_before_the_source(dockerfile: str) -> None:
    stage = final_stage(dockerfile)
    dep_install = next(
        n
        for n, i in enumerate(stage)
        if i.keyword == "RUN" and "pip install -c requirements.lock" in i.args
    )
    source_copies = [
        n
        for n, i in enumerate(stage)
        if i.keyword == "COPY" and set(i.words()[:-1]) & set(PACKAGES)
    ]
    assert source_copies and dep_install < min(source_copies)
    early_copies = [i.words()[:-1] for i in stage[:dep_install] if i.keyword == "COPY"]
    assert early_copies == [["pyproject.toml", "requirements.lock"]]


@pytest.mark.parametrize("dockerfile", ["Dockerfile.gateway", "Dockerfile.worker"])
def test_every_copied_path_is_in_the_build_context(dockerfile: str) -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for copy in of_kind(final_stage(dockerfile), "COPY"):
        for source in copy.words()[:-1]:
            assert (ROOT / source).exists(), f"{dockerfile} copies missing {source}"
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source


def test_dockerignore_keeps_local_environments_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_worker_build_argument_selects_the_torch_build() -> None:
    stage = parse_dockerfile(ROOT / "Dockerfile.worker")[-1]
    args = dict(i.args.partition("=")[::2] for i in of_kind(stage, "ARG"))
    assert args["TORCH_VARIANT"] == "cpu"
    assert args["TORCH_INDEX_URL"].endswith("/${TORCH_VARIANT}")
    torch_install = next(i.args for i in of_kind(stage, "RUN") if "torch==" in i.args)
    assert '--index-url "$TORCH_INDEX_URL"' in torch_install
    extras = next(i.args for i in of_kind(stage, "RUN") if "requirements.lock" in i.args)
    assert "['optional-dependencies']['worker']" in extras


def test_worker_bakes_hub_models_with_modelgate_fetch_as_its_user() -> None:
    stage = final_stage("Dockerfile.worker")
    keywords = [i.keyword for i in stage]
    fetch = next(n for n, i in enumerate(stage) if "modelgate fetch" in i.args)
    last_user = max(n for n, k in enumerate(keywords) if k == "USER")
    assert stage[fetch].keyword == "RUN" and last_user < fetch
    assert "BAKE_MODELS" in stage[fetch].args
    env = " ".join(i.args for i in of_kind(stage, "ENV"))
    assert "HF_HOME=" in env


# docker-compose.yml ----------------------------------------------------------------------------


def test_redis_persists_and_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in redis  # no password: never published


def test_jobs_never_evicted_and_the_cache_has_a_budget_of_its_own(
    services: dict[str, dict[str, Any]],
) -> None:
    def flag(command: list[str], name: str) -> str:
        return command[command.index(name) + 1]

    jobs, cache = services["redis"]["command"], services["redis-cache"]["command"]
    assert flag(jobs, "--maxmemory-policy") == "noeviction"
    assert flag(cache, "--maxmemory-policy") == "allkeys-lru"
    assert flag(jobs, "--maxmemory") and flag(cache, "--maxmemory")
    assert services["redis-cache"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in services["redis-cache"]
    for name, service in services.items():
        if not name.startswith("redis"):
            env = service["environment"]
            assert "redis://redis-cache:6379/0" in env["MODELGATE_CACHE_URL"], name
            assert service["depends_on"]["redis-cache"]["condition"] == "service_healthy", name


def test_every_service_has_a_restart_policy(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), name


def test_gateway_and_workers_wait_for_a_healthy_redis(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if not name.startswith("redis"):
            assert service["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_workers_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    workers = worker_services(services)
    assert "worker-minilm" in workers
    for name, worker in workers.items():
        assert "container_name" not in worker, name
        assert "ports" not in worker, name
        assert "hostname" not in worker, name  # the healthcheck tells replicas apart by hostname


def test_one_worker_service_per_model(services: dict[str, dict[str, Any]]) -> None:
    models = {m.name for m in load_registry(ROOT / "models.yaml").models}
    workers = worker_services(services)
    default_workers = {n for n, s in workers.items() if not s.get("profiles")}
    assert default_workers == {f"worker-{m}" for m in models}
    for name, worker in workers.items():
        model = served_model(worker)
        assert model in models, name
        assert worker["environment"]["MODELGATE_MODEL"] == model, name
        assert worker["build"]["dockerfile"] == "Dockerfile.worker", name


def test_a_gpu_worker_reserves_a_gpu(services: dict[str, dict[str, Any]]) -> None:
    gpu = [s for s in services.values() if "deploy" in s]
    assert gpu
    for service in gpu:
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices)
        assert service["build"]["args"]["TORCH_VARIANT"] != "cpu"
        assert service.get("profiles"), "a GPU worker must not start on machines without one"


def test_models_yaml_is_mounted_read_only(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name.startswith("redis"):
            continue
        assert f"./models.yaml:{CONFIG_IN_CONTAINER}:ro" in service["volumes"], name
        assert service["environment"]["MODELGATE_CONFIG"] == CONFIG_IN_CONTAINER, name


def test_gateway_publishes_its_port_and_uses_its_image(services: dict[str, dict[str, Any]]) -> None:
    gateway = services["gateway"]
    assert gateway["build"]["dockerfile"] == "Dockerfile.gateway"
    assert any(str(p).endswith(":8000") for p in gateway["ports"])
    command = json.loads(of_kind(final_stage("Dockerfile.gateway"), "CMD")[-1].args)
    assert command == ["modelgate", "gateway", "--host", "0.0.0.0", "--port", "8000"]


def _compose_client() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_docker_compose_config_accepts_the_file() -> None:
    client = _compose_client()
    if client is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    for profile in ([], ["--profile", "gpu"]):
        done = subprocess.run(
            [*client, "-f", str(ROOT / "docker-compose.yml"), *profile, "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr


# The worker healthcheck, run against a real Redis and a real worker presence -------------------


def _healthcheck_code(services: dict[str, dict[str, Any]]) -> str:
    """The worker healthcheck's shell line, as the container's shell gets it (compose turns
    ``$$`` into ``$``)."""
    test = services["worker-minilm"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and "modelgate probe worker" in test[1]
    return str(test[1]).replace("$$", "$")


def _run_check(code: str, redis_url: str, prefix: str, model: str) -> int:
    env = {
        **os.environ,
        "MODELGATE_REDIS_URL": redis_url,
        "MODELGATE_PREFIX": prefix,
        "MODELGATE_MODEL": model,
        # the image has modelgate on PATH; here it is the venv's
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("REDIS_URL", None)
    return subprocess.run(
        ["sh", "-c", code], env=env, cwd=ROOT, timeout=60, capture_output=True
    ).returncode


@pytest.mark.integration
def test_worker_healthcheck_follows_this_hosts_heartbeat(
    services: dict[str, dict[str, Any]], redis_server: RedisServer
) -> None:
    code = _healthcheck_code(services)
    keys = Keys(f"deploy-{uuid.uuid4().hex[:8]}")
    client = Redis.from_url(redis_server.url)
    here = Presence(client, keys, "minilm", "minilm-here", {"device": "cpu"})
    elsewhere = Presence(client, keys, "tiny", "tiny-there", {"host": f"x{socket.gethostname()}"})
    try:
        here.renew()
        elsewhere.renew()
        assert _run_check(code, redis_server.url, keys.prefix, "minilm") == 0
        assert _run_check(code, redis_server.url, keys.prefix, "tiny") == 1  # another container's
        assert _run_check(code, redis_server.url, keys.prefix, "absent") == 1
    finally:
        client.delete(*client.keys(f"{keys.prefix}:*"))
        client.close()
