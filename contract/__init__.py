"""What the gateway and the workers agree on: models.yaml, job payloads, Redis names."""
