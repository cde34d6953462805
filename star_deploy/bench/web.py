"""Measure a site: its size, and a generation in headless Chromium (WebAssembly) vs native ONNX Runtime, one run.

Both sides run the same graphs (a site's float16-stored weights fold back to the export's
float32 values when a session loads them), the same prompt and seed, one warm-up each, and
report the median wall time of ``RUNS`` generations and whether their tokens agree.
"""

from __future__ import annotations

import gzip
import logging
import statistics
import time
from pathlib import Path

import numpy as np

from ..errors import StarDeployError
from ..web.browser import SiteBrowser, run_form

log = logging.getLogger(__name__)

RUNS = 3
PROMPT = "a red circle on a blue background"
SEED = 0


def site_sizes(folder: Path) -> dict[str, int]:
    """Bytes on disk, and bytes a host that gzips its responses sends (what a visitor downloads)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    sent = sum(
        p.stat().st_size if p.suffix in (".gz", ".onnx") else len(gzip.compress(p.read_bytes(), 6)) for p in files
    )
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files), "gzip_transfer_bytes": sent}


def browser_times(folder: Path) -> tuple[dict, np.ndarray]:
    """Page load, first image after opening (through the form), and the median of ``RUNS`` generations."""
    with SiteBrowser(folder) as browser:
        page = browser.open()
        if page.state != "ready":
            raise StarDeployError(f"{folder}: the page did not load in Chromium: {page.message}")
        first = run_form(browser, PROMPT, SEED)
        seconds, tokens = [], None
        for _ in range(RUNS):
            result = browser.generate(PROMPT, SEED)
            seconds.append(result.seconds)
            tokens = result.tokens
        provider = browser.driver.execute_script("return window.star.provider + ' x' + window.star.threads")
    report = {
        "provider": provider,
        "load_seconds": round(page.seconds, 3),
        "first_image_seconds": None if first.first_image_ms is None else round(first.first_image_ms / 1000, 3),
        "generate_seconds": round(statistics.median(seconds), 3),
        "generate_seconds_all": [round(s, 3) for s in seconds],
    }
    return report, tokens


def native_times(artifacts: Path) -> tuple[dict, np.ndarray]:
    """The median wall time of ``RUNS`` generations with StarPipeline on ONNX Runtime (CPU) after a warm-up."""
    from ..api import StarPipeline

    pipe = StarPipeline.from_pretrained(str(artifacts))
    out = pipe(PROMPT, seed=SEED, output_type="np")
    seconds = []
    for _ in range(RUNS):
        start = time.perf_counter()
        out = pipe(PROMPT, seed=SEED, output_type="np")
        seconds.append(time.perf_counter() - start)
    return {"generate_seconds": round(statistics.median(seconds), 3)}, out.tokens[0]


def bench_site(folder: Path, artifacts: Path) -> dict:
    """The report of ``star-deploy web --bench``."""
    sizes = site_sizes(folder)
    browser, browser_tokens = browser_times(folder)
    native, native_tokens = native_times(artifacts)
    return {
        "site": str(folder),
        "artifacts": str(artifacts),
        "prompt": PROMPT,
        "seed": SEED,
        "site_size": sizes,
        "chromium": browser,
        "native_onnxruntime": native,
        "ratio_browser_to_native": round(browser["generate_seconds"] / native["generate_seconds"], 2),
        "tokens_equal": bool(np.array_equal(browser_tokens, native_tokens)),
    }
