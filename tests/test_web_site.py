"""`star-deploy web`: the site's files and refusals, and the demo site generating in headless Chromium.

The browser tests need Chromium with chromedriver and onnxruntime-web's dist/ folder: from
``STAR_DEPLOY_ORT_WEB``, else ``.ort-web/`` in the clone, which ``.ci/run`` fills with npm (and this
module fills too where npm is installed). They skip only where Chromium or npm is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from star_deploy import StarPipeline
from star_deploy.cli import app
from star_deploy.demo import DEMO_GRAPHS
from star_deploy.evaluation.parity import psnr
from star_deploy.files.images import read_png, to_uint8
from star_deploy.web.browser import SiteBrowser, chromium_paths, fill, run_form, text_of
from star_deploy.web.runtime import ORT_WEB_VERSION
from star_deploy.web.server import SiteHandler
from star_deploy.web.site import SITE_MANIFEST, build_site

REPO = Path(__file__).resolve().parent.parent
LOCAL_ORT_WEB = REPO / ".ort-web" / "node_modules" / "onnxruntime-web" / "dist"
CASES = [
    ("a red circle on a blue background", 0),
    ("a green triangle in the top left on a white background", 7),
    ("yellow backdrop with a big blue square", 123456789),
]
MIN_PSNR_DB = 35.0
needs_chromium = pytest.mark.skipif(
    chromium_paths() is None, reason="needs chromium and chromium-driver (apt-get install chromium chromium-driver)"
)


def ort_web_dist() -> Path | None:
    """onnxruntime-web's dist/: the environment's, the clone's, or installed into the clone with npm."""
    if os.environ.get("STAR_DEPLOY_ORT_WEB"):
        return Path(os.environ["STAR_DEPLOY_ORT_WEB"])
    if not LOCAL_ORT_WEB.is_dir() and shutil.which("npm"):
        subprocess.run(
            ["npm", "install", "--prefix", str(REPO / ".ort-web"), "--no-save", "--no-audit", "--no-fund"]
            + [f"onnxruntime-web@{ORT_WEB_VERSION}"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return LOCAL_ORT_WEB if LOCAL_ORT_WEB.is_dir() else None


@pytest.fixture(scope="module")
def dist() -> Path:
    found = ort_web_dist()
    if found is None:
        pytest.skip(f"needs npm to install onnxruntime-web@{ORT_WEB_VERSION} (or STAR_DEPLOY_ORT_WEB=its dist/)")
    return found


@pytest.fixture(scope="module")
def site(dist, tmp_path_factory) -> Path:
    return build_site(DEMO_GRAPHS, tmp_path_factory.mktemp("web") / "site", dist).out


@pytest.fixture(scope="module")
def references() -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokens (L,) and pixels (H, W, 3) of each case from Python: the demo on ONNX Runtime, fp32 graphs."""
    pipe = StarPipeline.from_pretrained()
    outputs = [pipe(prompt, seed=seed, output_type="np") for prompt, seed in CASES]
    return [(o.tokens[0], to_uint8(o.images[0].transpose(2, 0, 1))) for o in outputs]


def test_site_files_are_listed_with_their_sha256(site):
    data = json.loads((site / SITE_MANIFEST).read_text())
    files = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()} - {SITE_MANIFEST}
    assert set(data["files"]) == files
    for name in ("index.html", "star.mjs", "tokenizer.json", "tables.bin", "graphs/transformer_step.onnx.gz"):
        assert name in files
    total = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    graphs = sum((site / g["file"]).stat().st_size for g in data["graphs"].values())
    assert graphs < 0.55 * sum(p.stat().st_size for p in DEMO_GRAPHS.glob("*.onnx")), "fp16 storage halves graphs"
    assert total < 31e6, f"the demo site is {total / 1e6:.1f} MB"


def test_web_refuses_without_ort_web_and_over_an_existing_site(site, dist, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["web", "--out", str(tmp_path / "s"), "--ort-web", str(tmp_path)])
    assert missing.exit_code == 2
    assert "npm install" in missing.output and "onnxruntime-web" in missing.output
    existing = runner.invoke(app, ["web", "--out", str(site), "--ort-web", str(dist)])
    assert existing.exit_code == 2 and "--overwrite" in existing.output
    assert not (tmp_path / "s").exists()


def check_against_python(result, reference: tuple[np.ndarray, np.ndarray], case) -> float:
    tokens, pixels = reference
    assert np.array_equal(result.tokens, tokens), f"{case}: the browser drew other tokens than Python"
    diff = int(np.abs(result.pixels.astype(int) - pixels.astype(int)).max())
    assert diff <= 1, f"{case}: the browser's image differs from Python's by {diff} grey levels"
    return psnr(pixels / 255.0, result.pixels / 255.0)


@pytest.fixture(scope="module")
def browser(site):
    """The demo site open in one headless Chromium, ready to generate."""
    if chromium_paths() is None:
        pytest.skip("needs chromium and chromium-driver (apt-get install chromium chromium-driver)")
    with SiteBrowser(site) as browser:
        page = browser.open()
        assert page.state == "ready", page.message
        yield browser


def test_demo_site_draws_the_tokens_of_python_in_chromium(browser, references):
    for case, reference in zip(CASES, references):
        result = browser.generate(*case)
        assert check_against_python(result, reference, case) >= MIN_PSNR_DB


@needs_chromium
def test_demo_site_draws_the_tokens_of_python_on_webgpu(site, references):
    """WebGPU on SwiftShader: every graph on the GPU for the first prompt, then the decoder on WebAssembly."""
    with SiteBrowser(site, webgpu=True) as browser:
        page = browser.open()
        assert page.state == "ready", page.message
        providers = browser.driver.execute_script("return window.star.providers")
        assert set(providers.values()) == {"webgpu"}, providers
        for n, (case, reference) in enumerate(zip(CASES, references)):
            if n == 1:
                assert browser.load(graphProviders={"vq_decoder": "wasm"}).state == "ready"
            result = browser.generate(*case)
            assert check_against_python(result, reference, ("webgpu", case)) >= MIN_PSNR_DB


LOSE_GPU_ADAPTER = """
const request = navigator.gpu.requestAdapter.bind(navigator.gpu);
let asked = 0;
navigator.gpu.requestAdapter = async (...args) => (asked++ === 0 ? request(...args) : null);
"""
"""A WebGPU adapter that is there when the page looks and gone when onnxruntime-web asks for it (a lost GPU): the
page picks WebGPU, and no graph's session can be created there."""


@needs_chromium
def test_a_graph_webgpu_cannot_load_runs_on_webassembly_with_the_tokens_of_python(site, references):
    with SiteBrowser(site, webgpu=True) as browser:
        page = browser.open(timeout_s=90, before=LOSE_GPU_ADAPTER)
        assert page.state == "ready", page.message
        chosen = browser.driver.execute_script("return navigator.gpu !== undefined")
        providers = browser.driver.execute_script("return window.star.providers")
        notes = text_of(browser.driver, "notes")
        shown = text_of(browser.driver, "provider")
        result = browser.generate(*CASES[0])
    assert chosen and set(providers.values()) == {"wasm"}, providers
    for graph in providers:
        assert f"{graph} runs on WebAssembly: WebGPU could not load it" in notes, notes
    assert shown.startswith("execution provider: wasm"), shown
    assert check_against_python(result, references[0], ("fallback", CASES[0])) >= MIN_PSNR_DB


def test_fp32_storage_ships_the_exported_graphs_unchanged(artifacts_fp32, dist, tmp_path):
    site = build_site(artifacts_fp32, tmp_path / "site32", dist, weights="fp32").out
    files = json.loads((site / SITE_MANIFEST).read_text())["files"]
    exported = json.loads((artifacts_fp32 / "manifest.json").read_text())["files"]
    for name in ("text_encoder", "text_context", "transformer_step", "scale_update", "vq_decoder"):
        assert files[f"graphs/{name}.onnx.gz"]["content_sha256"] == exported[f"{name}.onnx"]


@needs_chromium
def test_a_tampered_graph_makes_the_page_refuse(site, tmp_path):
    copy = Path(shutil.copytree(site, tmp_path / "tampered"))
    graph = copy / "graphs" / "vq_decoder.onnx.gz"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    with SiteBrowser(copy) as browser:
        page = browser.open()
        assert page.state == "error"
        assert "graphs/vq_decoder.onnx.gz does not match site.json" in page.message
        assert "refusing to run" in page.message
        assert browser.driver.execute_script("return window.star === undefined")


def test_page_shows_every_scale_time_provider_and_offers_the_png(browser, references, tmp_path):
    run = run_form(browser, *CASES[1])
    assert run.state == "done", run.message
    assert run.previews == 6, "one preview per scale"
    assert re.fullmatch(r"\d+\.\d\d s per image", run.time_text)
    assert "execution provider: wasm" in run.provider_text
    (tmp_path / "star.png").write_bytes(run.png)
    pixels, text = read_png(tmp_path / "star.png")
    assert np.abs(pixels.astype(int) - references[1][1].astype(int)).max() <= 1
    assert text["prompt"] == CASES[1][0] and text["seed"] == str(CASES[1][1])
    assert {"cfg", "top_k", "top_p", "sampler", "backend"} <= set(text)


@needs_chromium
def test_page_says_so_when_a_download_fails_or_webassembly_is_missing(site, tmp_path):
    copy = Path(shutil.copytree(site, tmp_path / "partial"))
    (copy / "tokenizer.json").unlink()
    with SiteBrowser(copy) as browser:
        page = browser.open()
    assert page.state == "error"
    assert "download of tokenizer.json failed: HTTP 404" in page.message
    with SiteBrowser(site) as browser:
        page = browser.open(before="delete globalThis.WebAssembly;")
    assert page.state == "error" and "no WebAssembly" in page.message


def test_serve_sends_cross_origin_isolation_headers_on_localhost_only(site):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "star_deploy", "web", "--out", str(site), "--serve", "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, reply = time.monotonic() + 60, None
        while reply is None and time.monotonic() < deadline and server.poll() is None:
            try:
                reply = urllib.request.urlopen(f"http://127.0.0.1:{port}/star.mjs", timeout=5)
            except OSError:
                time.sleep(0.2)
        assert reply is not None, "the site server did not answer"
        assert reply.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert reply.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert reply.headers["Content-Type"].startswith("text/javascript")
    finally:
        server.terminate()
        _, log = server.communicate(timeout=30)
    assert f"on http://127.0.0.1:{port}/" in log


class GzipEncodingHandler(SiteHandler):
    """A host that sends .gz files with Content-Encoding: gzip, so the browser hands their contents to the page."""

    def end_headers(self) -> None:
        if self.path.endswith(".gz"):
            self.send_header("Content-Encoding", "gzip")
        super().end_headers()


@needs_chromium
def test_page_checks_gz_files_a_host_decompresses(site):
    with SiteBrowser(site, GzipEncodingHandler) as browser:
        page = browser.open()
    assert page.state == "ready", page.message


@needs_chromium
def test_fp16_export_runs_in_chromium_with_the_tokens_of_python(artifacts_fp16, dist, tmp_path):
    """A strongly typed fp16 export (float16 activations and KV cache) through the page: Python's tokens."""
    site = build_site(artifacts_fp16, tmp_path / "site", dist).out
    prompt, seed = "a red car.", 3
    python = StarPipeline.from_pretrained(artifacts_fp16)(prompt, seed=seed, output_type="np")
    with SiteBrowser(site) as browser:
        page = browser.open()
        assert page.state == "ready", page.message
        result = browser.generate(prompt, seed)
    check_against_python(result, (python.tokens[0], to_uint8(python.images[0].transpose(2, 0, 1))), prompt)


def test_page_uses_the_defaults_for_cleared_fields_and_refuses_text(browser):
    defaults = json.loads((browser.folder / SITE_MANIFEST).read_text())["sampling"]
    assert defaults["max_cfg"] == 1000 and browser.driver.execute_script("return document.getElementById('cfg').max")
    for field in ("cfg", "top_k", "top_p"):
        fill(browser.driver, field, "")
    run = run_form(browser, *CASES[0])
    assert run.state == "done", run.message
    text = read_png_text(run.png)
    assert (float(text["cfg"]), int(text["top_k"]), float(text["top_p"])) == (
        defaults["cfg"],
        defaults["top_k"],
        defaults["top_p"],
    )
    fill(browser.driver, "cfg", "500")
    assert run_form(browser, *CASES[0]).state == "done", "cfg up to 1000, as in Python"
    fill(browser.driver, "cfg", "1000.5")
    assert browser.driver.execute_script("return document.getElementById('cfg').validity.rangeOverflow")
    for field in ("cfg", "top_k", "top_p"):
        fill(browser.driver, field, str(defaults[field]))


def read_png_text(png: bytes) -> dict[str, str]:
    from io import BytesIO

    from PIL import Image

    return dict(Image.open(BytesIO(png)).text)


@needs_chromium
def test_page_names_a_broken_site_json_a_swapped_graph_and_a_file_url(site, tmp_path):
    broken = Path(shutil.copytree(site, tmp_path / "broken"))
    (broken / SITE_MANIFEST).write_text("{not json")
    swapped = Path(shutil.copytree(site, tmp_path / "swapped"))
    data = json.loads((swapped / SITE_MANIFEST).read_text())
    graphs = data["graphs"]
    decoder, update = graphs["vq_decoder"]["file"], graphs["scale_update"]["file"]
    shutil.copy2(swapped / update, swapped / decoder)
    data["files"][decoder] = data["files"][update]
    (swapped / SITE_MANIFEST).write_text(json.dumps(data))
    with SiteBrowser(broken) as browser:
        page = browser.open()
        assert page.state == "error" and "site.json at" in page.message and "is not valid JSON" in page.message
        browser.driver.get((site / "index.html").as_uri())
        state = browser.wait_for(("error",), 30)
        assert state == "error" and "must be served" in text_of(browser.driver, "message")
    with SiteBrowser(swapped) as browser:
        page = browser.open()
    assert page.state == "error", page.message
    assert f"{decoder}: not the vq_decoder graph this site needs (its inputs include unexpected" in page.message, (
        page.message
    )
