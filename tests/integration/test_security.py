"""API keys, and Redis with a password (MODELGATE_REDIS_URL carries it)."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from contract.config import load_registry
from contract.jobs import Keys
from gateway.app import create_app
from gateway.auth import hash_key, load_key_hashes
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
