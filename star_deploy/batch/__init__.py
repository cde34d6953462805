"""Bulk generation: a prompt file to a folder of PNGs and an index, resumable, in-process or on Ray Data.

``run_batch(BatchOptions(prompts, out, LoadOptions(...), CallOptions(...)))`` is what ``star-deploy batch``
runs. Nothing here imports Ray unless the job runs on a cluster (``BatchOptions.ray``), nor torch unless the
model needs it.
"""

from __future__ import annotations

from .job import run_batch
from .options import BatchOptions, RayOptions
from .plan import ItemSampling
from .progress import Summary

__all__ = ["BatchOptions", "ItemSampling", "RayOptions", "Summary", "run_batch"]
