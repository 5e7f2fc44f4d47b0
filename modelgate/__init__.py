"""The ``modelgate`` command: check models.yaml, run a worker, the gateway, or the whole stack."""
