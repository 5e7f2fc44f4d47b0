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

from modelgate.redis_server import RedisServer, free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

SETTINGS = ("REDIS_URL", "MODELGATE_REDIS_URL", "MODELGATE_CACHE_URL", "MODELGATE_PREFIX")


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


def tiny(model_dirs: dict[str, Path], name: str = "tiny") -> dict[str, object]:
    return {
        "name": name,
        "task": "text-classification",
        "source": {"path": str(model_dirs["tiny"])},
        "replicas": 1,  # one worker to find (auto starts one per core)
    }


def start_up(
    tmp_path: Path,
    model_dirs: dict[str, Path],
    ignore_sigint: bool,
    models: list[dict[str, object]] | None = None,
    **env_vars: str,
) -> tuple[subprocess.Popen[str], int]:
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": models or [tiny(model_dirs)]}))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(env_vars)

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


def test_a_model_that_cannot_load_leaves_the_others_serving(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert", "hidden_size": "many"}')
    models = [tiny(model_dirs), {**tiny(model_dirs, "broken"), "source": {"path": str(broken)}}]
    proc, port = start_up(tmp_path, model_dirs, False, models)
    url = f"http://127.0.0.1:{port}"
    try:
        log = (tmp_path / "up.log").read_text()
        assert "not serving broken (cannot load)" in log
        assert "broken-0" in log and "retrying in 5 s, the other models keep serving" in log
        assert "Traceback" not in log
        r = httpx.post(f"{url}/models/tiny/predict", json={"inputs": "hello"}, timeout=30)
        assert r.status_code == 200, r.text
        down = httpx.post(f"{url}/models/broken/predict", json={"inputs": "hello"}, timeout=30)
        assert down.status_code == 503 and down.headers["retry-after"]
        message = down.json()["error"]["message"]
        assert message.startswith(f"model 'broken' (path:{broken}) cannot load: "), message
        info = httpx.get(f"{url}/models/broken", timeout=10).json()
        assert info["ready"] is False and info["load_error"] in message
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503 and "broken" in ready.json()["load_errors"]
        assert httpx.get(f"{url}/models/tiny", timeout=10).json()["load_error"] is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_an_unreachable_redis_url_stops_up_before_any_model_loads(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(
        yaml.safe_dump({"models": [{**tiny({"tiny": Path("/nowhere")}), "name": "m"}]})
    )
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env["MODELGATE_REDIS_URL"] = "redis://:hunter2@127.0.0.1:1/0"
    done = subprocess.run(
        [sys.executable, "-m", "modelgate", "up", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    output = (done.stdout + done.stderr).strip().splitlines()
    assert output == [
        "modelgate: cannot reach Redis at redis://:***@127.0.0.1:1/0: "
        "Error 111 connecting to 127.0.0.1:1. Connection refused."
    ]


def test_a_given_redis_url_is_the_one_every_process_uses(
    tmp_path: Path, model_dirs: dict[str, Path], redis_server: RedisServer
) -> None:
    """MODELGATE_REDIS_URL given: no private Redis, and workers and gateway both use it (a
    stale REDIS_URL in the environment does not lead a child elsewhere)."""
    proc, port = start_up(
        tmp_path,
        model_dirs,
        False,
        MODELGATE_REDIS_URL=redis_server.url,
        REDIS_URL="redis://127.0.0.1:1/0",
        MODELGATE_PREFIX="uptest",
    )
    try:
        assert "started redis-server" not in (tmp_path / "up.log").read_text()
        r = httpx.post(
            f"http://127.0.0.1:{port}/models/tiny/predict", json={"inputs": "x"}, timeout=30
        )
        assert r.status_code == 200, r.text
        assert Redis.from_url(redis_server.url).zcard("uptest:presence:tiny") == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
