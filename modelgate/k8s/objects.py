"""What every generated object shares: the options, names, labels and pod parts.

Objects are plain dicts, as ``yaml.safe_dump`` writes them. Everything a pod needs from the
cluster comes from a Secret the user creates (Redis URLs hold passwords); everything else is
derived from models.yaml and the :class:`Options`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from contract.config import ModelSpec
from contract.jobs import DEFAULT_PREFIX

Obj = dict[str, Any]
"""One Kubernetes object (or part of one)."""

CONFIG_PATH = "/etc/modelgate/models.yaml"
"""Where both images read models.yaml (``MODELGATE_CONFIG``); relative ``path:`` sources are
relative to its folder, where the worker image keeps the models it builds."""

CONFIG_CHECKSUM = "modelgate/config-sha256"
"""Pod annotation holding models.yaml's hash: a changed file changes the pod templates, so
``kubectl apply`` rolls the gateway and the workers onto it (a ConfigMap change alone would not)."""

CONFIGMAP = "modelgate-models"

Models = Literal["baked", "fetch", "volume"]


@dataclass(frozen=True)
class Options:
    """What models.yaml does not say about a cluster: ``modelgate k8s``'s flags."""

    namespace: str = "modelgate"
    image_gateway: str = "modelgate-gateway:latest"
    image_worker: str = "modelgate-worker"
    """Repository of the worker image; tagged ``cpu`` or ``cuda`` per model, as the build does."""
    secret: str = "modelgate-redis"
    prefix: str = DEFAULT_PREFIX
    max_replicas: int = 8
    models: Models = "baked"
    """Where hub model files come from: baked into the image, fetched by an init container
    into an emptyDir, or a PersistentVolumeClaim (:attr:`models_claim`) filled beforehand."""
    models_claim: str = "modelgate-models"


def slug(name: str) -> str:
    """A model name as a DNS label: models.yaml allows '.' and '_', Kubernetes names do not.
    Two names can never share a slug: the registry refuses names that differ in punctuation."""
    return re.sub(r"[._]+", "-", name).strip("-")


def named(base: str, limit: int = 63) -> str:
    """``base`` if it fits a label value (KEDA labels its HPA with the ScaledObject's name),
    else cut and made unique by a hash of the whole."""
    if len(base) <= limit:
        return base
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"{base[: limit - 9].rstrip('-')}-{digest}"


def worker_name(spec: ModelSpec) -> str:
    """The name of a model's worker Deployment and of its ScaledObject."""
    return named(f"modelgate-worker-{slug(spec.name)}")


def labels(component: str, spec: ModelSpec | None = None) -> dict[str, str]:
    found = {"app.kubernetes.io/name": "modelgate", "app.kubernetes.io/component": component}
    return {**found, "modelgate/model": slug(spec.name)} if spec else found


def meta(name: str, options: Options, component: str, spec: ModelSpec | None = None) -> Obj:
    return {"name": name, "namespace": options.namespace, "labels": labels(component, spec)}


def namespace(options: Options) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": options.namespace}}


def config_map(config_text: str, options: Options) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(CONFIGMAP, options, "config"),
        "data": {"models.yaml": config_text},
    }


def checksum(config_text: str) -> str:
    return hashlib.sha256(config_text.encode("utf-8")).hexdigest()


def env(options: Options, **plain: str) -> list[Obj]:
    """Redis URLs from the Secret (they may hold passwords); the rest as plain values. The
    cache URL is optional: without it the response cache shares the job Redis."""
    return [
        {"name": "MODELGATE_CONFIG", "value": CONFIG_PATH},
        {"name": "MODELGATE_PREFIX", "value": options.prefix},
        {"name": "MODELGATE_LOG_FORMAT", "value": "json"},
        *({"name": k, "value": v} for k, v in plain.items()),
        _secret_env("MODELGATE_REDIS_URL", options.secret, "redis-url", optional=False),
        _secret_env("MODELGATE_CACHE_URL", options.secret, "cache-url", optional=True),
    ]


def _secret_env(name: str, secret: str, key: str, *, optional: bool) -> Obj:
    ref = {"name": secret, "key": key, "optional": optional}
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def config_volume() -> tuple[Obj, Obj]:
    """models.yaml from the ConfigMap, and its mount as one file, so the image's own files next
    to it (the sentiment model the worker image builds in /etc/modelgate/models) stay visible."""
    volume = {"name": "models-yaml", "configMap": {"name": CONFIGMAP}}
    mount = {"name": "models-yaml", "mountPath": CONFIG_PATH, "subPath": "models.yaml"}
    return volume, {**mount, "readOnly": True}


SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
"""Container security context; with :data:`POD_SECURITY` it meets the "restricted" Pod
Security Standard."""

POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""Both images run as uid 10001 (``modelgate``); fsGroup lets it write a mounted model cache."""


def pod(containers: list[Obj], volumes: list[Obj], grace_s: int, **extra: Any) -> Obj:
    return {
        # Service links would put variables such as MODELGATE_GATEWAY_PORT into every pod,
        # and modelgate reads MODELGATE_* from the environment.
        "enableServiceLinks": False,
        "securityContext": POD_SECURITY,
        "terminationGracePeriodSeconds": grace_s,
        **extra,
        "containers": containers,
        "volumes": volumes,
    }


def deployment(metadata: Obj, config_text: str, pod_spec: Obj) -> Obj:
    """A Deployment without ``replicas``: an autoscaler owns the count, and a ``kubectl apply``
    that set one would undo its work on every apply."""
    template_meta = {
        "labels": metadata["labels"],
        "annotations": {CONFIG_CHECKSUM: checksum(config_text)},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": metadata["labels"]},
            # A new pod serves (its probes pass) before an old one stops: no drop in capacity.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }
