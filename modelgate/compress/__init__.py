"""Smaller, faster models with their cost in quality measured: ``modelgate distill`` (a
student trained on its teacher's outputs), ``modelgate prune`` (layers and FFN channels cut by
measured importance) and ``modelgate evaluate`` (teacher and candidates, quantized variants
included, side by side on held-out text: quality, latency, throughput, size).

- :mod:`~modelgate.compress.data`: the corpus and its seeded train / held-out split.
- :mod:`~modelgate.compress.models`: resolving, loading, cutting and saving models.
- :mod:`~modelgate.compress.distill`, :mod:`~modelgate.compress.prune`,
  :mod:`~modelgate.compress.evaluate`: the three commands.

torch and transformers are imported inside functions: the CLI loads without them."""
