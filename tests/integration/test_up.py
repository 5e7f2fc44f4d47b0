"""`modelgate up`: the one-command stack starts, serves, and stops without leaving processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from redis import Redis

from modelgate.redis_server import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def redis_servers(log: str) -> tuple[str, str]:
    """The URLs of the job and cache Redis that `modelgate up` says it started."""
    jobs = re.search(r"redis-server for jobs at (\S+) ", log)
    cache = re.search(r"redis-server for the cache at (\S+) ", log)
    assert jobs and cache, log
    return jobs[1], cache[1]


def policy(url: str) -> tuple[str, int]:
    client = Redis.from_url(url)
    config = client.config_get("maxmemory*")
    client.close()
    value = config["maxmemory-policy"]
    return (value.decode() if isinstance(value, bytes) else value), int(config["maxmemory"])


def start_up(
    tmp_path: Path, model_dirs: dict[str, Path], ignore_sigint: bool
) -> tuple[subprocess.Popen[str], int]:
    config = tmp_path / "models.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "tiny",
                        "task": "text-classification",
                        "source": {"path": str(model_dirs["tiny"])},
                    },
                ]
            }
        )
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MODELGATE_PREFIX")}

    def preexec() -> None:
        if ignore_sigint:  # what a non-interactive shell does to a background job
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    # A file, not a pipe: a pipe nobody drains fills up and blocks every child that logs.
    log = open(tmp_path / "up.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelgate", "up", "--config", str(config), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=preexec,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        text = (tmp_path / "up.log").read_text()
        if "modelgate ready" in text:
            assert f"ready: http://127.0.0.1:{port}" in text
            return proc, port
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("modelgate up never printed its ready line")


@pytest.mark.parametrize(("sig", "ignore_sigint"), [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_up_serves_then_stops_everything(
    tmp_path: Path, model_dirs: dict[str, Path], sig: int, ignore_sigint: bool
) -> None:
    proc, port = start_up(tmp_path, model_dirs, ignore_sigint)
    try:
        kids = children_of(proc.pid)
        assert len(kids) >= 3  # a worker, the gateway (the redis-servers run in their sessions)
        r = httpx.post(
            f"http://127.0.0.1:{port}/models/tiny/predict", json={"inputs": "hello"}, timeout=30
        )
        assert r.status_code == 200 and r.json()["outputs"]["label"] in {"negative", "positive"}
        jobs, cache = redis_servers((tmp_path / "up.log").read_text())
        assert policy(jobs) == ("noeviction", 1024**3)
        assert policy(cache) == ("allkeys-lru", 256 * 1024**2)
        assert Redis.from_url(cache).dbsize() >= 1  # the answer's cache entry, in the cache Redis
        proc.send_signal(sig)
        assert proc.wait(timeout=40) == 0
        assert "modelgate: stopped" in (tmp_path / "up.log").read_text()
        time.sleep(0.2)
        assert not [k for k in kids if alive(k)], "children left behind"
    finally:
        if proc.poll() is None:
            proc.kill()


def worker_pids(parent: int) -> set[int]:
    pids = set()
    for pid in children_of(parent):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"workers" in cmd:
            pids.add(pid)
    return pids


def test_up_replaces_a_worker_that_stops_heart_beating(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    proc, port = start_up(tmp_path, model_dirs, ignore_sigint=False)
    try:
        (hung,) = worker_pids(proc.pid)
        os.kill(hung, signal.SIGSTOP)  # alive but making no progress, like a stuck native call
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (alive(hung) or not worker_pids(proc.pid)):
            time.sleep(0.5)
        assert not alive(hung), "the hung worker was not replaced"
        url = f"http://127.0.0.1:{port}/models/tiny/predict"
        while time.monotonic() < deadline:
            r = httpx.post(url, json={"inputs": "after replacement"}, timeout=30)
            if r.status_code == 200:
                break
            time.sleep(0.5)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
