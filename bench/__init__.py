"""Benchmarks of modelgate; see bench/README.md."""
