"""Helpers of the serve tests: free ports, PNG decoding, concurrent requests, a headless Chromium."""

from __future__ import annotations

import base64
import io
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from star_deploy.serve.client import Reply, request
from star_deploy.web.browser import CHROMIUM_FLAGS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def b64_pixels(data: str) -> np.ndarray:
    return png_pixels(base64.b64decode(data))


def post_all(url: str, bodies: list[dict], timeout_s: float = 180.0) -> list[Reply]:
    """POST every body at once (one thread each) and return the replies in order."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: request(url, b, timeout_s=timeout_s), bodies))


def same_image(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to one grey level (float rounding of the decoder across batch sizes)."""
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


def chromium_driver(profile_dir: str):
    """A headless Chromium driven by selenium, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Ray's raylet and workers included)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def replica_pids(server: int) -> list[int]:
    """The model replicas started by the server process ``server``."""
    pids = []
    for pid in descendants(server):
        try:
            if b"StarReplica" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return pids
