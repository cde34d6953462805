"""The onnxruntime-web files a site ships: which ones, where they come from, and the message when they are missing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

ORT_WEB_VERSION = "1.30.0"
"""The onnxruntime-web release the page is written and tested against (npm package ``onnxruntime-web``)."""

NPM_HINT = (
    f"npm install --prefix .ort-web onnxruntime-web@{ORT_WEB_VERSION} "
    "and pass --ort-web .ort-web/node_modules/onnxruntime-web/dist"
)


@dataclass(frozen=True)
class RuntimeBuild:
    """One onnxruntime-web build: its ES module, the Emscripten glue it imports, and its WebAssembly binary."""

    name: str
    module: str
    glue: str
    binary: str
    providers: tuple[str, ...]


BUILDS = (
    RuntimeBuild("wasm", "ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm", ("wasm",)),
    RuntimeBuild(
        "webgpu",
        "ort.webgpu.min.mjs",
        "ort-wasm-simd-threaded.asyncify.mjs",
        "ort-wasm-simd-threaded.asyncify.wasm",
        ("webgpu", "wasm"),
    ),
)


def check_ort_web(dist: Path | None) -> Path:
    """``dist`` if it holds every file of ``BUILDS``; a one-line error saying how to get it otherwise."""
    if dist is None:
        raise ConfigError(f"--ort-web DIR is required (onnxruntime-web's dist/ folder): {NPM_HINT}")
    missing = [f for b in BUILDS for f in (b.module, b.glue, b.binary) if not (dist / f).is_file()]
    if missing:
        raise ConfigError(f"--ort-web {dist}: not onnxruntime-web's dist/ folder (no {missing[0]}); {NPM_HINT}")
    return dist


def ort_web_version(dist: Path) -> str | None:
    """The version in the package.json beside ``dist``, where there is one."""
    try:
        return json.loads((dist.parent / "package.json").read_text()).get("version")
    except (OSError, ValueError):
        return None
