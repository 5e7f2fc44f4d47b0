"""``modelgate k8s`` (Kubernetes manifests from models.yaml) and ``modelgate probe worker`` (the
worker pods' liveness probe): their arguments, and their failures as one line each."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from contract.config import ConfigError, load_registry
from modelgate.cli import bounded_int, config_default

K8S_DOC = """Writes Kubernetes manifests for a models.yaml as a kustomize layout under --out:
  base/            namespace, models.yaml as a ConfigMap, the gateway (Deployment, Service,
                   HPA on CPU, PodDisruptionBudget) and KEDA's Redis credentials if needed
  overlays/cpu/    base + one worker Deployment and KEDA ScaledObject per CPU model
  overlays/gpu/    base + the same for each `device: cuda` model (nvidia.com/gpu, GPU nodes)
  redis-secret.example.yaml   the Secret you create: redis-url, cache-url (optional) and,
                   when --redis-url has a password, redis-password for KEDA
Each ScaledObject scales its model's workers on the length of the model's two RQ queues
(sync and bulk), to zero for a model with `scale_to_zero: true`. Needs KEDA in the cluster.
Apply with: kubectl apply -k OUT/overlays/cpu (and OUT/overlays/gpu). Running it again
rewrites the same files byte for byte and removes the files of models no longer there.
Guide: docs/deployment.md, "Kubernetes"."""


def cmd_k8s(args: argparse.Namespace) -> int:
    from contract.redisconn import BadRedisURL
    from modelgate.k8s.layout import build, write
    from modelgate.k8s.objects import Options

    try:
        registry = load_registry(args.config)
        text = Path(args.config).read_text(encoding="utf-8")
    except ConfigError as err:
        print(f"modelgate k8s: {err.source}: {'; '.join(err.problems)}", file=sys.stderr)
        return 1
    options = Options(
        namespace=args.namespace,
        image_gateway=args.image_gateway,
        image_worker=args.image_worker,
        secret=args.redis_url_secret,
        prefix=args.prefix,
        max_replicas=args.max_replicas,
        models=args.models,
        models_claim=args.models_claim,
    )
    try:
        layout = build(registry, text, options, args.redis_url)
        written = write(Path(args.out), layout)
    except BadRedisURL as err:
        print(f"modelgate k8s: --redis-url: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(
            f"modelgate k8s: cannot write {err.filename or args.out}: {err.strerror or err}",
            file=sys.stderr,
        )
        return 1
    for note in layout.notes:
        print(f"modelgate k8s: note: {note}", file=sys.stderr)
    print(
        f"modelgate k8s: {len(layout.files)} files in {args.out} ({len(written.changed)} "
        f"written, {len(written.removed)} removed); apply: kubectl apply -k {args.out}/overlays/cpu"
    )
    return 0


def _add_k8s(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "k8s",
        help="write Kubernetes manifests (kustomize base + cpu/gpu overlays, KEDA) for models.yaml",
        description=K8S_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=config_default(), help="models.yaml path")
    p.add_argument("--out", default="deploy/k8s", help="output folder (default %(default)s)")
    p.add_argument("--namespace", default="modelgate", help="namespace (default %(default)s)")
    p.add_argument(
        "--image-gateway",
        default="modelgate-gateway:latest",
        help="gateway image (default %(default)s)",
    )
    p.add_argument(
        "--image-worker",
        default="modelgate-worker",
        help="worker image repository, tagged :cpu or :cuda per model (default %(default)s)",
    )
    p.add_argument(
        "--redis-url",
        default="redis://redis:6379/0",
        help="the job Redis as KEDA reaches it (redis://, rediss:// or redis+sentinel://); "
        "only its hosts, database, TLS and whether it has a password are used, never the "
        "password itself; a Service's short name gets .NAMESPACE.svc (default %(default)s)",
    )
    p.add_argument(
        "--redis-url-secret",
        default="modelgate-redis",
        metavar="NAME",
        help="the Secret holding redis-url, cache-url and redis-password (default %(default)s)",
    )
    p.add_argument(
        "--prefix",
        default="modelgate",
        help="MODELGATE_PREFIX of every pod, and so the queue names KEDA reads (default "
        "%(default)s)",
    )
    p.add_argument(
        "--max-replicas",
        type=bounded_int(1, 1000, "whole number"),
        default=8,
        metavar="N",
        help="most workers per model KEDA starts (default %(default)s)",
    )
    p.add_argument(
        "--models",
        choices=["baked", "fetch", "volume"],
        default="baked",
        help="where workers find hub models: baked into the image (default), fetched by an "
        "init container (modelgate fetch) into an emptyDir, or a PersistentVolumeClaim",
    )
    p.add_argument(
        "--models-claim",
        default="modelgate-models",
        metavar="NAME",
        help="the PersistentVolumeClaim of --models volume (default %(default)s)",
    )
    p.set_defaults(func=cmd_k8s)


def cmd_probe(args: argparse.Namespace) -> int:
    from contract.settings import CommonSettings
    from modelgate.probe import check_worker

    if not args.model:
        print("modelgate probe worker: give --model NAME (or set MODELGATE_MODEL)", file=sys.stderr)
        return 2
    problem = check_worker(CommonSettings(), args.model, args.redis_down_ok)
    if problem:
        print(f"modelgate probe worker: {problem}", file=sys.stderr)
        return 1
    return 0


def _add_probe(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("probe", help="health probes for orchestrators (exit status 0 or 1)")
    kinds = p.add_subparsers(dest="probe", required=True, metavar="KIND")
    w = kinds.add_parser(
        "worker",
        help="a worker of this host heart-beats for the model",
        description="Exits 0 when a worker on this host (by hostname: a pod's or a container's "
        "own) heart-beats for --model in Redis (MODELGATE_REDIS_URL, MODELGATE_PREFIX); else "
        "1, with the reason on stderr. A liveness probe for worker pods and containers.",
    )
    w.add_argument(
        "--model",
        default=os.environ.get("MODELGATE_MODEL"),
        help="the model's name (default: MODELGATE_MODEL)",
    )
    w.add_argument(
        "--redis-down-ok",
        action="store_true",
        help="pass while Redis cannot be reached (for a liveness probe: a restart would not "
        "bring Redis back, only reload the model); fail only when Redis answers without this "
        "host's heartbeat",
    )
    w.set_defaults(func=cmd_probe)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _add_k8s(sub)
    _add_probe(sub)
