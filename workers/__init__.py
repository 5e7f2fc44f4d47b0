"""The worker process: one preloaded transformers pipeline serving its model's RQ queue."""
