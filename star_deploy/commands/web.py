"""``star-deploy web``: a static site that generates in the visitor's browser with onnxruntime-web."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from .common import ArtifactsAlias, OverwriteOpt, artifacts_folder, reports_errors

log = logging.getLogger("star_deploy")


def write_site(
    folder: Path | None,
    out: Path,
    ort_web: Path | None,
    weights: str,
    serve: bool,
    port: int,
    bench: bool,
    overwrite: bool,
) -> None:
    """Write the site from ``folder`` (the demo's graphs without it), then measure and/or serve it."""
    from ..runtime.plan import LoadOptions, plan_load
    from ..web.runtime import check_ort_web
    from ..web.site import SITE_MANIFEST, build_site

    reuse = (serve or bench) and folder is None and not overwrite and (out / SITE_MANIFEST).is_file()
    artifacts = plan_load(LoadOptions(artifacts=folder)).artifacts
    if not reuse:
        report = build_site(artifacts, out, check_ort_web(ort_web), weights, overwrite)
        log.info("wrote %d files, %.1f MB (%s weights) to %s", report.files, report.bytes / 1e6, weights, out)
        typer.echo(str(out))
    if bench:
        from ..bench.web import bench_site

        typer.echo(json.dumps(bench_site(out, artifacts), indent=2))
    if serve:
        serve_site(out, port)


Out = Annotated[Path | None, typer.Option("--out", "-o", help="The site folder to write (or, with --serve, to serve).")]
Artifacts = Annotated[
    Path | None, typer.Argument(help="Artefact folder from `star-deploy export`. Default: the built-in demo.")
]
OrtWeb = Annotated[
    Path | None,
    typer.Option(
        "--ort-web",
        envvar="STAR_DEPLOY_ORT_WEB",
        help="onnxruntime-web's dist/ folder (npm install onnxruntime-web); its runtime files go into the site.",
    ),
]
Weights = Annotated[
    str,
    typer.Option(
        "--weights",
        "--storage",
        help="fp16: float32 weights stored as float16 and cast back on load (half the download, float32 math); "
        "fp32: the graphs as exported; int8, int4: the transformer's and text encoder's MatMul weights in 8- or "
        "4-bit blocks (MatMulNBits; from an fp32 or fp16 export), the rest as fp16.",
    ),
]
GpuMemory = Annotated[
    str | None,
    typer.Option(
        "--gpu-memory",
        metavar="SIZE",
        help="Print the GPU memory a site of this model size (256-d16, 1024-d30, ...) needs in the browser with "
        "--weights, computed from its shapes: weights, KV cache, the largest activation with the attention whole "
        "and in query pieces, the largest buffer against 2 and 4 GiB. Writes nothing.",
    ),
]
Serve = Annotated[
    bool, typer.Option("--serve", help="Serve the site on 127.0.0.1 with cross-origin isolation headers until Ctrl-C.")
]
Port = Annotated[int, typer.Option("--port", help="Port of --serve (0: a free one).")]
Bench = Annotated[
    bool,
    typer.Option(
        "--bench",
        help="Measure the site: its size, and a generation in headless Chromium (WebAssembly) vs native ONNX Runtime "
        "on ARTIFACTS' graphs in the same run; JSON on stdout.",
    ),
]


def web(
    out: Out = None,
    artifacts: Artifacts = None,
    ort_web: OrtWeb = None,
    weights: Weights = "fp16",
    serve: Serve = False,
    port: Port = 8000,
    bench: Bench = False,
    artifacts_option: ArtifactsAlias = None,
    overwrite: OverwriteOpt = False,
    gpu_memory: GpuMemory = None,
) -> None:
    """Write a static site that runs STAR in the browser (WebGPU, else WebAssembly) with the tokens of Python.

    The folder holds index.html, the ES modules (star.mjs: StarGenerator.load(url) and generate()),
    the graphs, tokenizer.json, the per-scale tables, the onnxruntime-web runtime and site.json
    with the sha256 of every file, which the page checks before it runs. Any static host works;
    WebAssembly threads need the cross-origin isolation headers that --serve sends. With --serve
    or --bench and no ARTIFACTS, an existing site in --out is used as it is.
    """
    if gpu_memory is not None:
        print_gpu_memory(gpu_memory, weights)
        return
    if out is None:
        raise ConfigError("--out DIR is required: the folder to write the site into (or to serve)")
    folder = artifacts_folder(artifacts, artifacts_option, required=False)
    write_site(folder, out, ort_web, weights, serve, port, bench, overwrite)


def print_gpu_memory(size: str, weights: str) -> None:
    """The browser GPU memory table of preset ``size`` with ``weights``."""
    from ..core.config import preset
    from ..web.gpu_memory import gpu_memory_table
    from ..web.site import ATTENTION_CHUNK

    config = preset(size)
    typer.echo(f"{size} with --weights {weights}: GPU memory of one image in the browser (computed; 1 GB = 1e9 B)")
    for line in gpu_memory_table(config, weights, ATTENTION_CHUNK):
        typer.echo(line)


def serve_site(folder: Path, port: int) -> None:
    """Serve ``folder`` until Ctrl-C or SIGTERM."""
    from ..web.server import site_server

    if not 0 <= port < 65536:
        raise ConfigError(f"--port {port}: choose a port in 0..65535")
    try:
        server = site_server(folder, port)
    except OSError as exc:
        raise ConfigError(f"--port {port}: cannot listen on 127.0.0.1 ({exc.strerror}); choose another port") from None
    with server:
        host, bound = server.server_address[:2]
        typer.secho(f"serving {folder} on http://{host}:{bound}/ (Ctrl-C stops)", err=True)
        try:
            server.serve_forever()
        finally:
            server.server_close()


command = reports_errors(web)
