"""One worker Deployment per model: ``modelgate worker --model NAME`` in the worker image.

A pod is one worker process. It is live (and, at start, started) while
``modelgate probe worker`` finds its heartbeat in Redis, and on SIGTERM it finishes its current
batch before it exits, which its grace period covers. A ``device: cuda`` model's pods take the
CUDA image, one ``nvidia.com/gpu`` and a GPU node.
"""

from __future__ import annotations

import math

from contract.config import ModelSpec
from modelgate.k8s.objects import (
    CONFIG_PATH,
    SECURITY,
    Obj,
    Options,
    config_volume,
    deployment,
    env,
    meta,
    pod,
    worker_name,
)

HF_HOME = "/var/cache/modelgate/hf"
"""The worker image's Hugging Face cache (Dockerfile.worker), where ``modelgate fetch`` puts hub
models and workers load them from."""

GRACE_S = 30
"""terminationGracePeriodSeconds beyond a model's ``timeout_s``: on SIGTERM a worker finishes its
current batch (at most ``timeout_s``), writes its results and withdraws its presence."""

GPU_NODE_LABEL = "nvidia.com/gpu.present"
"""Set on GPU nodes by NVIDIA's GPU feature discovery (GPU Operator); CUDA workers select it."""

MEMORY = ("1Gi", "4Gi")
"""A worker's memory request and limit: a small encoder uses well under 1 GiB; patch a large
model's Deployment in an overlay of your own."""


def is_gpu(spec: ModelSpec) -> bool:
    """Whether a model's workers need a GPU: ``cuda`` or ``cuda:N`` (``auto`` runs on CPU in the
    CPU image)."""
    return spec.device.startswith("cuda")


def threads(spec: ModelSpec) -> int:
    """Torch threads (and CPU cores requested) of one worker pod: the entry's ``threads``, else
    one. ``replicas: auto`` runs one single-threaded worker a core (measured best, README
    "Worker processes or threads"); on Kubernetes the autoscaler adds pods, not threads."""
    return spec.threads or 1


def grace_s(spec: ModelSpec) -> int:
    return math.ceil(spec.timeout_s) + GRACE_S


def worker(spec: ModelSpec, config_text: str, options: Options) -> Obj:
    """The Deployment of one model's workers (its ScaledObject sets the count)."""
    image = f"{options.image_worker}:{'cuda' if is_gpu(spec) else 'cpu'}"
    yaml_volume, yaml_mount = config_volume()
    cache, init = _model_files(spec, options, image)
    container = {
        "name": "worker",
        "image": image,
        "command": ["modelgate", "worker", "--model", spec.name, "--threads", str(threads(spec))],
        # Hub models come from the image or the volume, never from the network at start.
        "env": env(options, MODELGATE_MODEL=spec.name, HF_HOME=HF_HOME, HF_HUB_OFFLINE="1"),
        "resources": _resources(spec),
        # Neither started nor ready until its model has loaded and it heart-beats: 10 min.
        "startupProbe": _probe(spec, 10, 60),
        "livenessProbe": _probe(spec, 30, 3, "--redis-down-ok"),
        "volumeMounts": [yaml_mount, *([cache["mount"]] if cache else [])],
        "securityContext": SECURITY,
    }
    placement: Obj = {}
    if is_gpu(spec):
        placement["nodeSelector"] = {GPU_NODE_LABEL: "true"}
        toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        placement["tolerations"] = [toleration]
    if init:
        placement["initContainers"] = init
    volumes = [yaml_volume, *([cache["volume"]] if cache else [])]
    pod_spec = pod([container], volumes, grace_s(spec), **placement)
    return deployment(meta(worker_name(spec), options, "worker", spec), config_text, pod_spec)


def _probe(spec: ModelSpec, period: int, failures: int, *flags: str) -> Obj:
    """``modelgate probe worker``: this pod's worker heart-beats in Redis (the pod's hostname
    is the host its worker reports). Liveness passes while Redis is away (``--redis-down-ok``):
    restarting every worker would not bring Redis back."""
    return {
        "exec": {"command": ["modelgate", "probe", "worker", "--model", spec.name, *flags]},
        "periodSeconds": period,
        "timeoutSeconds": 10,
        "failureThreshold": failures,
    }


def _resources(spec: ModelSpec) -> Obj:
    cpu = str(threads(spec))
    requests = {"cpu": cpu, "memory": MEMORY[0]}
    limits = {"cpu": cpu, "memory": MEMORY[1]}
    if is_gpu(spec):
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = "1"
    return {"requests": requests, "limits": limits}


def _model_files(spec: ModelSpec, options: Options, image: str) -> tuple[Obj, list[Obj]]:
    """What :attr:`Options.models` adds to a worker pod: a cache volume at HF_HOME with the
    worker's mount of it, and for ``fetch`` the init container that fills it."""
    if options.models == "baked":
        return {}, []
    mount = {"name": "hf-cache", "mountPath": HF_HOME}
    if options.models == "volume":
        claim = {"claimName": options.models_claim, "readOnly": True}
        volume = {"name": "hf-cache", "persistentVolumeClaim": claim}
        return {"volume": volume, "mount": {**mount, "readOnly": True}}, []
    fetch = {
        "name": "fetch",
        "image": image,
        "command": ["modelgate", "fetch", "--config", CONFIG_PATH, "--model", spec.name],
        "env": [{"name": "HF_HOME", "value": HF_HOME}],
        "volumeMounts": [config_volume()[1], mount],
        "securityContext": SECURITY,
    }
    return {"volume": {"name": "hf-cache", "emptyDir": {}}, "mount": mount}, [fetch]
