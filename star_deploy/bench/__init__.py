"""Benchmarks: every backend against the official-style baseline and the compute floor; the server; the browser.

The lines of ``star-deploy bench`` are the baseline and every backend's ``BenchVariant`` in the registry.
"""

from ..backends.registry import bench_variants

BASELINE = "torch-eager"
"""The official-style baseline: the reference model run eagerly as the official scripts do (bench only)."""
BENCH_BACKENDS = (BASELINE, *bench_variants())
"""Backend names ``star-deploy bench --backends`` takes."""
