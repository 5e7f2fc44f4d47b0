"""The gateway on Kubernetes: a Deployment, its Service, an HPA on CPU and a
PodDisruptionBudget.

Its probes are ``/healthz`` (the process answers) for liveness and readiness alike. ``/readyz``
wants a live worker of every model that does not scale to zero, so one model whose workers are
all down would take every gateway out of the Service at once, and clients would get refused
connections instead of the gateway's own answer (503 with Retry-After). Redis is shared by every
replica too: a readiness check on Redis alone fails them all together, for the seconds of a
Sentinel failover say, with the same result.
"""

from __future__ import annotations

import math

from contract.config import ModelSpec
from modelgate.k8s.objects import (
    SECURITY,
    Obj,
    Options,
    config_volume,
    deployment,
    env,
    labels,
    meta,
    pod,
)

NAME = "modelgate-gateway"
PORT = 8000

DRAIN_S = 5
"""Seconds a stopping gateway keeps serving before SIGTERM (a preStop sleep), while the Service
takes it out of its endpoints; without it a rolling restart drops the requests sent meanwhile."""

REPLICAS = (2, 10)
"""The HPA's replica range: at least two, so one can restart while the other serves."""

CPU_TARGET = 70
"""The HPA's target: average CPU use, percent of the request."""


def gateway(specs: list[ModelSpec], config_text: str, options: Options) -> list[Obj]:
    # An in-flight sync request waits up to its model's timeout_s: SIGTERM leaves it that.
    drain = max((math.ceil(m.timeout_s) for m in specs), default=30)
    volume, mount = config_volume()
    container = {
        "name": "gateway",
        "image": options.image_gateway,
        "command": [
            *("modelgate", "gateway", "--host", "0.0.0.0", "--port", str(PORT)),
            *("--graceful-timeout", str(drain)),
        ],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": env(options),
        "resources": {
            "requests": {"cpu": "500m", "memory": "256Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
        "startupProbe": _healthz(2, 30),
        "livenessProbe": _healthz(10, 3),
        "readinessProbe": _healthz(5, 2),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(DRAIN_S)]}}},
        "volumeMounts": [mount],
        "securityContext": SECURITY,
    }
    spec = pod([container], [volume], DRAIN_S + drain + 10)
    return [
        deployment(meta(NAME, options, "gateway"), config_text, spec),
        _service(options),
        _hpa(options),
        _pdb(options),
    ]


def _healthz(period: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": "/healthz", "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _service(options: Options) -> Obj:
    port = {"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(NAME, options, "gateway"),
        "spec": {"type": "ClusterIP", "selector": labels("gateway"), "ports": [port]},
    }


def _hpa(options: Options) -> Obj:
    low, high = REPLICAS
    target = {"type": "Utilization", "averageUtilization": CPU_TARGET}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(NAME, options, "gateway"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": target}}],
        },
    }


def _pdb(options: Options) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(NAME, options, "gateway"),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": labels("gateway")}},
    }
