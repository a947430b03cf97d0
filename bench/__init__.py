"""Benchmarks that put pnpbroker beside its peers and its limits (see bench/README.md)."""
