"""Cache keys and modes, and that a failing cache never fails a request."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from contract.cache import item_key
from gateway.cache import MISSING, CacheMode, ResponseCache


def test_key_changes_with_weights_parameters_and_input() -> None:
    base = item_key("p", "m", "fp1", {"top_k": 1}, "text")
    assert base.startswith("p:cache:m:")
    assert base == item_key("p", "m", "fp1", {"top_k": 1}, "text")
    assert base != item_key("p", "m", "fp2", {"top_k": 1}, "text")
    assert base != item_key("p", "m", "fp1", {"top_k": 2}, "text")
    assert base != item_key("p", "m", "fp1", {"top_k": 1}, "text ")
    assert item_key("p", "m", "f", {"a": 1, "b": 2}, "t") == item_key(
        "p", "m", "f", {"b": 2, "a": 1}, "t"
    )


def test_cache_control_modes() -> None:
    assert CacheMode.from_header(None) is CacheMode.NORMAL
    assert CacheMode.from_header("no-cache") is CacheMode.REFRESH
    assert CacheMode.from_header("max-age=0, No-Store") is CacheMode.BYPASS


class BrokenRedis:
    async def mget(self, keys: list[str]) -> Any:
        raise RedisConnectionError("down")


async def test_a_failing_cache_reads_as_a_miss() -> None:
    cache = ResponseCache(BrokenRedis(), "p")  # type: ignore[arg-type]
    lookup = await cache.lookup("m", "fp", {}, ["a", "b"])
    assert lookup.outputs == [MISSING, MISSING] and lookup.missing == [0, 1]
    assert lookup.status == "miss"
