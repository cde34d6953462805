"""Benchmarking: FLOP counts, device throughput, timed runs of every backend, fidelity, reports."""
