"""API keys, and Redis with a password (MODELGATE_REDIS_URL carries it)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from contract.config import load_registry
from contract.jobs import Keys
from gateway.app import create_app
from gateway.auth import KeyPolicy, hash_key, load_key_hashes, load_keys
from gateway.dispatch import Dispatcher
from gateway.settings import GatewaySettings
from modelgate.redis_server import RedisServer
from tests.conftest import PREFIX, ROOT, Stack

pytestmark = pytest.mark.integration


def client_for(
    stack: Stack, redis_url: str, **settings: object
) -> tuple[httpx.AsyncClient, Dispatcher]:
    cfg = GatewaySettings(config=str(stack.config), redis_url=redis_url, prefix=PREFIX, **settings)  # type: ignore[arg-type]
    dispatcher = Dispatcher(redis_url, Keys(PREFIX))
    app = create_app(cfg, registry=load_registry(stack.config), dispatcher=dispatcher)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw"
    ), dispatcher


async def test_api_keys_guard_everything_but_the_probes(stack: Stack, tmp_path: object) -> None:
    client, dispatcher = client_for(stack, stack.redis_url, api_keys=hash_key("s3cret-key"))
    async with client:
        paths = (
            "/",
            "/models",
            "/metrics",
            "/status",
            "/docs",
            "/openapi.json",
            "/jobs/" + "0" * 32,
        )
        for path in paths:
            r = await client.get(path)
            assert r.status_code == 401, path
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
        r = await client.post(
            "/models/tiny-cls/predict",
            json={"inputs": "x"},
            headers={"Authorization": "Bearer wrong-key"},
        )
        assert r.status_code == 401
        assert (await client.get("/healthz")).status_code == 200
        # The dashboard's page holds no data; it asks for a key when /status needs one.
        assert (await client.get("/dashboard")).status_code == 200
        assert (await client.get("/dashboard-assets/dashboard.js")).status_code == 200
        assert (await client.get("/readyz")).status_code in (200, 503)
        ok = await client.post(
            "/models/tiny-cls/predict",
            json={"inputs": "x"},
            headers={"Authorization": "Bearer s3cret-key"},
        )
        assert ok.status_code == 200
    await dispatcher.close()


def test_key_file_and_bad_hashes(tmp_path: object) -> None:
    from pathlib import Path

    f = Path(str(tmp_path)) / "keys"
    f.write_text(f"# ops team\n{hash_key('a')}\n\n{hash_key('b')}  # ci\n")
    assert load_key_hashes("", str(f)) == {hash_key("a"), hash_key("b")}
    with pytest.raises(ValueError, match="not SHA-256"):
        load_key_hashes("plaintext-key", None)
    out = subprocess.run(
        [sys.executable, "-m", "modelgate", "hash-key", "a"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.stdout.strip() == hash_key("a")


async def test_redis_with_a_password_through_redis_url(stack: Stack) -> None:
    with RedisServer(password="p@ss-word") as server:
        assert ":p@ss-word@" in server.url
        client, dispatcher = client_for(stack, server.url)
        async with client:
            r = await client.get("/models/tiny-cls")
            assert r.status_code == 200 and r.json()["live_workers"] == 0  # reached, authenticated
        await dispatcher.close()
        wrong = server.url.replace("p@ss-word", "nope")
        client, dispatcher = client_for(stack, wrong)
        async with client:
            r = await client.get("/models/tiny-cls")
            assert r.status_code == 503 and r.json()["error"]["code"] == "redis_unavailable"
        await dispatcher.close()


def keys_file(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "keys"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


async def test_per_key_allowlists_and_rates_hold_across_replicas(
    stack: Stack, tmp_path: Path
) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"  # fresh buckets for this test
    file = keys_file(
        tmp_path,
        "# two tenants with limits, one without",
        f"{hash_key('search-key')}  name={tenant}-search models=tiny-cls requests_per_s=2",
        f"{hash_key('bulk-key')}  name={tenant}-bulk inputs_per_s=5",
        hash_key("free-key"),
    )
    one, d1 = client_for(stack, stack.redis_url, api_keys_file=file)
    two, d2 = client_for(stack, stack.redis_url, api_keys_file=file)  # a second replica

    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async with one, two:
        ok = [
            await c.post(
                "/models/tiny-cls/predict", json={"inputs": "x"}, headers=auth("search-key")
            )
            for c in (one, two)
        ]
        assert [r.status_code for r in ok] == [200, 200]
        # The burst (2 requests) is spent, on either replica: one bucket in Redis.
        limited = await two.post(
            "/models/tiny-cls/predict", json={"inputs": "x"}, headers=auth("search-key")
        )
        assert limited.status_code == 429, limited.text
        assert limited.json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        # Another tenant's capacity is untouched by that burst.
        free = await one.post(
            "/models/tiny-cls/predict", json={"inputs": "x"}, headers=auth("free-key")
        )
        assert free.status_code == 200
        # Outside the allowlist: 403, for sync requests, jobs and the OpenAI API alike.
        for path, body in (
            ("/models/minilm/predict", {"inputs": "x"}),
            ("/models/minilm/jobs", {"inputs": "x"}),
            ("/v1/embeddings", {"model": "minilm", "input": "x"}),
        ):
            r = await one.post(path, json=body, headers=auth("search-key"))
            assert r.status_code == 403, (path, r.text)
            assert "forbidden" in r.text and "tiny-cls" in r.text
        # Inputs a second: a request larger than the bucket passes when it is full, then the
        # key waits until it has refilled.
        eight = {"inputs": [f"input {i}" for i in range(8)]}
        first = await one.post("/models/tiny-cls/predict", json=eight, headers=auth("bulk-key"))
        assert first.status_code == 200, first.text
        second = await one.post("/models/tiny-cls/predict", json=eight, headers=auth("bulk-key"))
        assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limited"
        await asyncio.sleep(float(second.headers["retry-after"]) + 0.2)
        third = await one.post("/models/tiny-cls/predict", json=eight, headers=auth("bulk-key"))
        assert third.status_code == 200, third.text
    await d1.close()
    await d2.close()


def test_key_file_limits_are_checked_at_start(stack: Stack, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one of name=, models=, requests_per_s=, inputs_per_s="):
        load_keys("", keys_file(tmp_path, f"{hash_key('a')} rate=5"))
    with pytest.raises(ValueError, match="a positive number"):
        load_keys("", keys_file(tmp_path, f"{hash_key('a')} requests_per_s=-1"))
    policy = load_keys("", keys_file(tmp_path, f"{hash_key('a')} name=t models=a,b inputs_per_s=9"))
    assert policy[hash_key("a")] == KeyPolicy(
        hash_key("a"), name="t", models=frozenset({"a", "b"}), inputs_per_s=9.0
    )
    unknown = keys_file(tmp_path, f"{hash_key('a')} models=no-such-model")
    cfg = GatewaySettings(
        config=str(stack.config), redis_url=stack.redis_url, api_keys_file=unknown
    )
    with pytest.raises(ValueError, match="no-such-model"):
        create_app(cfg, registry=load_registry(stack.config))
