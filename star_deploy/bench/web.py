"""Measure a site: its size, and a generation in headless Chromium (WebAssembly) vs native ONNX Runtime, one run.

Both sides run the same graphs (native ONNX Runtime the site's own, ``artifacts_from_site``), the
same prompt and seed, one warm-up each, and report the median wall time of ``RUNS`` generations
and whether their tokens agree. The page is opened twice: the second visit reads every file from
the browser's cache. One generation on WebGPU through Chromium's SwiftShader adapter (software) is
recorded for correctness, not speed.
"""

from __future__ import annotations

import gzip
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import StarDeployError
from ..web.artifacts import artifacts_from_site
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
        second = browser.open()
    report = {
        "provider": provider,
        "load_seconds": round(page.seconds, 3),
        "second_visit_load_seconds": round(second.seconds, 3) if second.state == "ready" else second.message,
        "first_image_seconds": None if first.first_image_ms is None else round(first.first_image_ms / 1000, 3),
        "generate_seconds": round(statistics.median(seconds), 3),
        "generate_seconds_all": [round(s, 3) for s in seconds],
    }
    return report, tokens


def webgpu_record(folder: Path) -> tuple[dict, object]:
    """One generation on WebGPU through SwiftShader: the time (not a speed claim) and its tokens."""
    with SiteBrowser(folder, webgpu=True) as browser:
        page = browser.open()
        if page.state != "ready":
            return {"error": page.message}, None
        result = browser.generate(PROMPT, SEED)
        providers = browser.driver.execute_script("return window.star.providers")
    return {
        "providers": providers,
        "load_seconds": round(page.seconds, 3),
        "generate_seconds": round(result.seconds, 3),
    }, result


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
    with tempfile.TemporaryDirectory(prefix="star-site-graphs-") as tmp:
        native, native_tokens = native_times(artifacts_from_site(folder, Path(tmp) / "graphs"))
    webgpu, webgpu_result = webgpu_record(folder)
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
        "webgpu_swiftshader": webgpu,
        "webgpu_tokens_equal": None
        if webgpu_result is None
        else bool(np.array_equal(webgpu_result.tokens, native_tokens)),
    }
