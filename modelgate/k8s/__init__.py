"""``modelgate k8s``: Kubernetes manifests generated from models.yaml, so they never drift from
the models they serve. Imports neither torch nor FastAPI.

- :mod:`.objects` — the options, names, labels and pod parts every object shares;
- :mod:`.gateway` — the gateway's Deployment, Service, HPA and PodDisruptionBudget;
- :mod:`.workers` — one worker Deployment per model (CPU or GPU);
- :mod:`.keda` — a ScaledObject per model on its queue lengths, KEDA's Redis credentials;
- :mod:`.layout` — the kustomize base and overlays, written so a rerun changes nothing;
- :mod:`.commands` — the ``modelgate k8s`` and ``modelgate probe`` commands.
"""
