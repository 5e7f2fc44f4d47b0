"""KEDA objects that scale each model's workers on the length of its RQ queues.

A model has two queues (lanes), Redis lists named by :meth:`contract.jobs.Keys.queue_key`: the
interactive one (sync requests) and the bulk one (async jobs, Batch API lines). Its ScaledObject
has one trigger per lane, KEDA's ``redis`` list scaler, or ``redis-sentinel`` when the job Redis
is reached through Sentinel; the Deployment gets the largest of the replica counts. A model
that scales to zero also has a trigger on each lane's started jobs (RQ's started registry, a
sorted set, which KEDA's scaler counts too), so a worker busy with jobs is never stopped.

KEDA's operator connects to Redis itself, from its own namespace, so it needs the address in
the ScaledObject (with a Service's short name made whole) and the password from the Secret,
through a TriggerAuthentication; neither object ever holds a password. Metadata names follow
KEDA v2.20's ``pkg/scalers/redis_scaler.go`` (the CRDs the tests validate against are in
``tests/data/keda``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from contract.config import ModelSpec
from contract.jobs import BULK, INTERACTIVE, Keys
from contract.redisconn import BadRedisURL, parse_sentinel
from modelgate.k8s.objects import Obj, Options, labels, worker_name

AUTH_NAME = "modelgate-redis"
"""The TriggerAuthentication every ScaledObject refers to when Redis needs credentials."""

SECRET_KEYS = {
    "password": "redis-password",
    "username": "redis-username",
    "sentinelPassword": "redis-sentinel-password",
}
"""KEDA's authentication parameters, and the Secret's key each is read from."""

POLLING_S = 5
"""How often KEDA reads the queue lengths."""

COOLDOWN_S = 300
"""Seconds of empty queues before a scale-to-zero model's last worker stops: a new worker must
load its model again, so do not tear one down for a short pause."""

BULK_FACTOR = 4
"""A bulk lane's target per replica is this many times the interactive one's: async work
tolerates waiting, and the interactive lane is what needs a replica quickly."""


@dataclass(frozen=True)
class RedisTarget:
    """What KEDA needs to know of the job Redis, read from its URL (never its password)."""

    scaler: str
    addresses: tuple[str, ...]
    db: int
    tls: bool
    master: str | None = None
    auth: tuple[str, ...] = ()
    """KEDA authentication parameters the URL shows a need for (keys of SECRET_KEYS)."""

    def metadata(self, list_name: str, list_length: int) -> dict[str, str]:
        """A trigger's metadata: KEDA wants every value as a string."""
        where = (
            {"addresses": ",".join(self.addresses), "sentinelMaster": self.master or ""}
            if self.scaler == "redis-sentinel"
            else {"address": self.addresses[0]}
        )
        return {
            **where,
            "listName": list_name,
            "listLength": str(list_length),
            "activationListLength": "0",  # one queued job wakes a scaled-to-zero model
            "databaseIndex": str(self.db),
            "enableTLS": "true" if self.tls else "false",
        }


def redis_target(url: str, namespace: str) -> RedisTarget:
    """Read ``url`` (``redis://``, ``rediss://`` or a Sentinel URL); ValueError with one line
    when KEDA cannot use it. A Service's short host name gets ``.<namespace>.svc``."""
    sentinel = parse_sentinel(url)
    if sentinel is not None:
        needs = [("password", sentinel.password), ("username", sentinel.username)]
        needs.append(("sentinelPassword", sentinel.sentinel_password))
        return RedisTarget(
            scaler="redis-sentinel",
            addresses=tuple(_address(h, p, namespace) for h, p in sentinel.sentinels),
            db=sentinel.db,
            tls=sentinel.ssl,
            master=sentinel.master,
            auth=tuple(k for k, v in needs if v),
        )
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise BadRedisURL(
            f"{parts.scheme or url!r}: KEDA reaches Redis by redis://, rediss:// or "
            "redis+sentinel:// HOST:PORT"
        )
    try:
        port = parts.port or 6379
        db = int(parse_qs(parts.query).get("db", [parts.path.strip("/") or "0"])[0])
    except ValueError as err:
        raise BadRedisURL(f"the Redis URL's port or database is not a number: {err}") from None
    needs = [("password", parts.password), ("username", parts.username)]
    return RedisTarget(
        scaler="redis",
        addresses=(_address(unquote(parts.hostname), port, namespace),),
        db=db,
        tls=parts.scheme == "rediss",
        auth=tuple(k for k, v in needs if v),
    )


def _address(host: str, port: int, namespace: str) -> str:
    """``host:port`` as KEDA's operator, in its own namespace, must dial it."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if "." not in host and host != "localhost":
            host = f"{host}.{namespace}.svc"
    else:
        if ":" in host:
            host = f"[{host}]"
    return f"{host}:{port}"


def interactive_target(spec: ModelSpec) -> int:
    """Waiting sync jobs per replica: two full batches, a short wait behind the current one."""
    return 2 * spec.max_batch_size


def min_replicas(spec: ModelSpec) -> int:
    """0 where the model allows cold starts; else its numeric ``replicas``, at least 1."""
    if spec.scale_to_zero:
        return 0
    return max(1, spec.replicas) if isinstance(spec.replicas, int) else 1


def scaled_object(spec: ModelSpec, target: RedisTarget, options: Options) -> Obj:
    """The ScaledObject of one model's worker Deployment: a trigger per lane."""
    keys = Keys(options.prefix)
    length = interactive_target(spec)
    triggers = [
        _trigger(target, "interactive", keys.queue_key(spec.name, INTERACTIVE), length),
        _trigger(target, "bulk", keys.queue_key(spec.name, BULK), BULK_FACTOR * length),
    ]
    if spec.scale_to_zero:
        # Jobs being run have left the queues: without these, steady light traffic (each job
        # taken at once) reads as idle, and the last worker would stop while it serves. A
        # replica runs at most a batch at a time, so these only keep the model awake.
        triggers += [
            _trigger(
                target, f"{lane}-running", keys.started_key(spec.name, lane), spec.max_batch_size
            )
            for lane in (INTERACTIVE, BULK)
        ]
    low = min_replicas(spec)
    name = worker_name(spec)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {
            "name": name,
            "namespace": options.namespace,
            "labels": labels("worker", spec),
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": low,
            "maxReplicaCount": max(low, options.max_replicas),
            "pollingInterval": POLLING_S,
            "cooldownPeriod": COOLDOWN_S,
            "triggers": triggers,
        },
    }


def _trigger(target: RedisTarget, name: str, list_name: str, length: int) -> Obj:
    trigger: Obj = {
        "type": target.scaler,
        "name": name,
        "metadata": target.metadata(list_name, length),
    }
    if target.auth:
        trigger["authenticationRef"] = {"name": AUTH_NAME}
    return trigger


def trigger_authentication(target: RedisTarget, options: Options) -> Obj | None:
    """Credentials from the Secret, for the triggers; None when the URL shows none."""
    if not target.auth:
        return None
    refs = [{"parameter": p, "name": options.secret, "key": SECRET_KEYS[p]} for p in target.auth]
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {
            "name": AUTH_NAME,
            "namespace": options.namespace,
            "labels": labels("autoscaling"),
        },
        "spec": {"secretTargetRef": refs},
    }
