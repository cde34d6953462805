"""A site in headless Chromium through selenium: open the page, call ``window.star.generate``, read the result.

Used by ``star-deploy web --bench`` and the tests; needs Chromium, its chromedriver and selenium
(``pip install selenium``; Debian: ``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import base64
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from ..errors import BackendUnavailableError, StarDeployError
from .server import SiteHandler, site_server

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WEBGPU_FLAGS = ("--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader", "--enable-unsafe-swiftshader")
"""WebGPU on SwiftShader, Chromium's software adapter (no shader-f16, 1 GiB buffers): the WebGPU path runs, slowly,
on a machine without a GPU. Only for pages on 127.0.0.1 or https://."""
LOAD_TIMEOUT_S = 120.0


def webgpu_flags() -> tuple[str, ...]:
    """Chromium's flags with its GPU left on and WebGPU on SwiftShader."""
    return (*(f for f in CHROMIUM_FLAGS if f != "--disable-gpu"), *WEBGPU_FLAGS)


GENERATE_TIMEOUT_S = 300.0
SCRIPT_TIMEOUT_S = 60.0
GENERATE_SCRIPT = """
const request = arguments[0];
window.benchResult = null;
window.star.generate({...request, seed: BigInt(request.seed)}).then(
  (r) => {
    let bytes = "";
    for (const b of r.image.data) bytes += String.fromCharCode(b);
    window.benchResult = {tokens: r.tokens.map((t) => Array.from(t)), seconds: r.seconds, width: r.image.width,
                          height: r.image.height, rgba: btoa(bytes)};
  },
  (err) => { window.benchResult = {error: String(err && err.message || err)}; });
"""
LOAD_SCRIPT = """
const [options, done] = [arguments[0], arguments[arguments.length - 1]];
window.star = undefined;
const start = performance.now();
import(new URL("star.mjs", location.href).href)
  .then((m) => m.StarGenerator.load(new URL(".", location.href).href, options))
  .then((star) => { window.star = star; done({state: "ready", message: star.notes.join("; "),
                                              seconds: (performance.now() - start) / 1000}); },
        (err) => done({state: "error", message: String(err && err.message || err), seconds: 0}));
"""
POLL_S = 0.05


def chromium_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) where both are installed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@dataclass(frozen=True)
class PageState:
    """The page after loading: ready or error, its message, and how long it took."""

    state: str
    message: str
    seconds: float


@dataclass(frozen=True)
class BrowserImage:
    """One generation in the browser: tokens of every scale joined (L,), pixels (H, W, 3) uint8, seconds."""

    tokens: np.ndarray
    pixels: np.ndarray
    seconds: float


class SiteBrowser:
    """The site ``folder`` served on 127.0.0.1 and opened in a fresh headless Chromium (a context manager)."""

    def __init__(self, folder: Path, handler: type[SiteHandler] = SiteHandler, webgpu: bool = False) -> None:
        paths = chromium_paths()
        if paths is None:
            raise BackendUnavailableError("needs chromium and chromedriver: apt-get install chromium chromium-driver")
        self.folder, self.paths = folder, paths
        self.flags = webgpu_flags() if webgpu else CHROMIUM_FLAGS
        self.profile = tempfile.TemporaryDirectory(prefix="star-web-")
        self.server = site_server(folder, 0, handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.driver = None

    def __enter__(self) -> SiteBrowser:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service
        except ImportError:
            self.__exit__(None, None, None)
            raise BackendUnavailableError("driving Chromium needs selenium: pip install selenium") from None
        options = webdriver.ChromeOptions()
        options.binary_location = self.paths[0]
        for flag in (*self.flags, f"--user-data-dir={self.profile.name}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(executable_path=self.paths[1]), options=options)
        self.driver.set_page_load_timeout(LOAD_TIMEOUT_S)
        self.driver.set_script_timeout(SCRIPT_TIMEOUT_S)
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.driver is not None:
            self.driver.quit()
        self.server.shutdown()
        self.server.server_close()
        self.profile.cleanup()

    def page_state(self) -> str:
        return self.driver.execute_script("return document.body.dataset.state || ''")

    def wait_for(self, states: tuple[str, ...], timeout_s: float) -> str:
        """Poll the page's state until it is one of ``states``; the last state seen at the timeout."""
        deadline = time.monotonic() + timeout_s
        state = self.page_state()
        while state not in states and time.monotonic() < deadline:
            time.sleep(POLL_S)
            state = self.page_state()
        return state

    def open(self, timeout_s: float = LOAD_TIMEOUT_S, before: str | None = None) -> PageState:
        """Load the page and wait until it is ready (files verified, sessions created) or has failed.

        ``before`` is JavaScript run in the page before its own scripts (e.g. to remove an API).
        """
        if before is not None:
            self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": before})
        start = time.perf_counter()
        self.driver.get(self.url)
        state = self.wait_for(("ready", "error"), timeout_s)
        message = self.driver.execute_script("return document.getElementById('message').textContent")
        return PageState(state, message, time.perf_counter() - start)

    def load(self, timeout_s: float = LOAD_TIMEOUT_S, **options) -> PageState:
        """Load the site again in the open page with ``StarGenerator.load``'s ``options`` (e.g. executionProvider,
        graphProviders) as ``window.star``; the notes it made (graphs moved to WebAssembly, ...) as the message."""
        self.driver.set_script_timeout(timeout_s)
        try:
            result = self.driver.execute_async_script(LOAD_SCRIPT, options)
        finally:
            self.driver.set_script_timeout(SCRIPT_TIMEOUT_S)
        return PageState(result["state"], result["message"], float(result["seconds"]))

    def generate(
        self, prompt: str, seed: int, timeout_s: float = GENERATE_TIMEOUT_S, **settings: float
    ) -> BrowserImage:
        """``window.star.generate`` for one prompt; raises with the page's message if it fails."""
        request = {"prompt": prompt, "seed": str(seed), **settings}
        self.driver.execute_script(GENERATE_SCRIPT, request)
        deadline = time.monotonic() + timeout_s
        result = None
        while result is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
            result = self.driver.execute_script("return window.benchResult")
        if result is None:
            raise StarDeployError(f"the page did not finish a generation within {timeout_s:.0f} s")
        if "error" in result:
            raise StarDeployError(f"the page failed to generate: {result['error']}")
        rgba = np.frombuffer(base64.b64decode(result["rgba"]), np.uint8)
        pixels = rgba.reshape(result["height"], result["width"], 4)[..., :3].copy()
        tokens = np.concatenate([np.asarray(t, dtype=np.int64) for t in result["tokens"]])
        return BrowserImage(tokens, pixels, float(result["seconds"]))


READ_DOWNLOAD_SCRIPT = """
const done = arguments[arguments.length - 1];
fetch(document.getElementById('download').href).then((r) => r.arrayBuffer()).then((b) => {
  let bytes = "";
  for (const x of new Uint8Array(b)) bytes += String.fromCharCode(x);
  done(btoa(bytes));
}, (err) => done(""));
"""


@dataclass(frozen=True)
class PageRun:
    """One generation through the page's form: what it shows afterwards, and its PNG download."""

    state: str
    message: str
    previews: int
    time_text: str
    provider_text: str
    png: bytes
    first_image_ms: float | None


def fill(driver, element_id: str, value: str) -> None:
    driver.execute_script("document.getElementById(arguments[0]).value = arguments[1]", element_id, value)


def text_of(driver, element_id: str) -> str:
    return driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id)


def run_form(browser: SiteBrowser, prompt: str, seed: int, timeout_s: float = GENERATE_TIMEOUT_S) -> PageRun:
    """Type ``prompt`` and ``seed`` into the page, press Generate and wait until it is done or failed."""
    driver = browser.driver
    fill(driver, "prompt", prompt)
    fill(driver, "seed", str(seed))
    driver.execute_script("document.getElementById('generate').click()")
    state = browser.wait_for(("done", "error"), timeout_s)
    png = base64.b64decode(driver.execute_async_script(READ_DOWNLOAD_SCRIPT)) if state == "done" else b""
    return PageRun(
        state,
        text_of(driver, "message"),
        driver.execute_script("return document.querySelectorAll('#previews canvas').length"),
        text_of(driver, "time"),
        text_of(driver, "provider"),
        png,
        driver.execute_script("return window.firstImageMs ?? null"),
    )
