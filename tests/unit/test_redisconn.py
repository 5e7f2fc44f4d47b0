"""Redis URLs (plain and Sentinel) and when to wait for replicas: pure logic."""

from __future__ import annotations

import pytest

from contract.redisconn import (
    BadRedisURL,
    MasterConnection,
    ReplicaAcks,
    parse_sentinel,
    sync_client,
)
from contract.settings import CommonSettings


def test_a_plain_url_is_not_sentinel() -> None:
    assert parse_sentinel("redis://127.0.0.1:6379/0") is None
    assert parse_sentinel("rediss://:pw@redis.example.com:6380/1") is None


def test_sentinel_url_parts() -> None:
    url = "redis+sentinel://app:s3cret@10.0.0.1:26379,10.0.0.2,sentinel-3:26380/mymaster/2"
    parsed = parse_sentinel(url + "?sentinel_password=sp")
    assert parsed is not None
    assert parsed.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("sentinel-3", 26380)]
    assert (parsed.master, parsed.db, parsed.username, parsed.password) == (
        "mymaster",
        2,
        "app",
        "s3cret",
    )
    assert parsed.sentinel_password == "sp" and not parsed.ssl
    assert parse_sentinel("rediss+sentinel://h:1/m").ssl  # type: ignore[union-attr]
    assert parse_sentinel("redis+sentinel://h:1/m").db == 0  # type: ignore[union-attr]
    assert "s3cret" not in repr(parsed)
    ipv6 = parse_sentinel("redis+sentinel://[::1]:26380,[fe80::1]/m?sentinel_password=a%2Bb+c")
    assert ipv6 is not None and ipv6.sentinels == [("::1", 26380), ("fe80::1", 26379)]
    assert ipv6.sentinel_password == "a+b+c"  # as written, %-escapes decoded


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel:///mymaster", "at least one sentinel"),
        ("redis+sentinel://h:26379", "MASTER_NAME"),
        ("redis+sentinel://h:26379/m/x", "not a number"),
        ("redis+sentinel://h:port/m", "no valid port"),
        ("redis+sentinel://h:1/m/0/extra", "MASTER_NAME"),
        ("redis+sentinel://h:1/m?db=2", "unknown option 'db'"),
        ("redis+sentinel://[::1/m", "not a valid Redis URL"),
        ("redis+sentinel://[::1]x/m", "not \\[IPV6\\]:PORT"),
    ],
)
def test_bad_sentinel_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(BadRedisURL, match=why):
        parse_sentinel(url)


def test_a_sentinel_client_reconnects_through_the_sentinels() -> None:
    client = sync_client("redis+sentinel://127.0.0.1:1/mg/3", socket_timeout=1)
    pool = client.connection_pool
    assert pool.connection_class is MasterConnection
    assert pool.connection_kwargs["db"] == 3 and pool.service_name == "mg"  # type: ignore[attr-defined]


def test_replica_acks_default_follows_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELGATE_REDIS_URL", "redis+sentinel://h:26379/mg")
    assert CommonSettings().acks == 1
    monkeypatch.setenv("MODELGATE_REDIS_URL", "redis://h:6379/0")
    assert CommonSettings().acks == 0
    monkeypatch.setenv("MODELGATE_REPLICA_ACKS", "2")
    assert CommonSettings().acks == 2


def test_replica_acks_waits_marks_first_and_stops_waiting_for_a_lost_replica() -> None:
    acks = ReplicaAcks("p:mark", wanted=1, timeout_ms=500, recheck_s=5.0)
    sent = acks.commands(0.0)
    assert [c[0] for c in sent] == ["SET", "WAIT"] and sent[1][1:] == (1, 500)
    acks.update(sent, [True, 1], 0.0)
    assert acks.expected == 1 and acks.short == 0
    # The replica is gone (it became the master): one WAIT runs out, then none are sent ...
    acks.update(sent, [True, 0], 1.0)
    assert acks.expected == 0 and acks.short == 1
    assert acks.commands(2.0) == []
    # ... until the recheck, which reads ROLE and waits again once a replica is back.
    check = acks.commands(6.5)
    assert [c[0] for c in check] == ["ROLE"]
    acks.update(check, [[b"master", 10, [[b"127.0.0.1", b"6380", b"10"]]]], 6.5)
    assert acks.expected == 1
    assert [c[0] for c in acks.commands(7.0)] == ["SET", "WAIT"]


def test_replica_acks_reads_a_replica_role_as_none() -> None:
    acks = ReplicaAcks("p:mark", wanted=2, recheck_s=0.0)
    acks.expected = 0
    check = acks.commands(1.0)
    acks.update(check, [[b"slave", b"127.0.0.1", 6379, b"connected", 5]], 1.0)
    assert acks.expected == 0
