"""The ``modelgate`` command: check a models.yaml, run a worker or the gateway, or the whole stack."""
