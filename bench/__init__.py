"""Benchmarks (not tests); ``python -m bench.run_all`` runs them all (``make bench``)."""
