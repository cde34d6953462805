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


def web(
    out: Annotated[Path, typer.Option("--out", "-o", help="The site folder to write (or, with --serve, to serve).")],
    artifacts: Annotated[
        Path | None, typer.Argument(help="Artefact folder from `star-deploy export`. Default: the built-in demo.")
    ] = None,
    ort_web: Annotated[
        Path | None,
        typer.Option(
            "--ort-web",
            envvar="STAR_DEPLOY_ORT_WEB",
            help="onnxruntime-web's dist/ folder (npm install onnxruntime-web); its runtime files go into the site.",
        ),
    ] = None,
    weights: Annotated[
        str,
        typer.Option(
            "--weights",
            "--storage",
            help="fp16: float32 weights stored as float16 and cast back on load (half the download, float32 math); "
            "fp32: the graphs as exported; int8, int4: the transformer's and text encoder's MatMul weights in 8- or "
            "4-bit blocks (MatMulNBits; from an fp32 export), the rest as fp16.",
        ),
    ] = "fp16",
    serve: Annotated[
        bool,
        typer.Option("--serve", help="Serve the site on 127.0.0.1 with cross-origin isolation headers until Ctrl-C."),
    ] = False,
    port: Annotated[int, typer.Option("--port", help="Port of --serve (0: a free one).")] = 8000,
    bench: Annotated[
        bool,
        typer.Option(
            "--bench",
            help="Measure the site: its size, and a generation in headless Chromium (WebAssembly) vs native ONNX "
            "Runtime on ARTIFACTS' graphs in the same run; JSON on stdout.",
        ),
    ] = False,
    artifacts_option: ArtifactsAlias = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write a static site that runs STAR in the browser (WebGPU, else WebAssembly) with the tokens of Python.

    The folder holds index.html, the ES modules (star.mjs: StarGenerator.load(url) and generate()),
    the graphs, tokenizer.json, the per-scale tables, the onnxruntime-web runtime and site.json
    with the sha256 of every file, which the page checks before it runs. Any static host works;
    WebAssembly threads need the cross-origin isolation headers that --serve sends. With --serve
    or --bench and no ARTIFACTS, an existing site in --out is used as it is.
    """
    from ..demo import DEMO_GRAPHS
    from ..web.runtime import check_ort_web
    from ..web.site import SITE_MANIFEST, build_site

    folder = artifacts_folder(artifacts, artifacts_option, required=False)
    reuse = (serve or bench) and folder is None and not overwrite and (out / SITE_MANIFEST).is_file()
    folder = folder or DEMO_GRAPHS
    if not reuse:
        report = build_site(folder, out, check_ort_web(ort_web), weights, overwrite)
        log.info("wrote %d files, %.1f MB (%s weights) to %s", report.files, report.bytes / 1e6, weights, out)
        typer.echo(str(out))
    if bench:
        from ..bench.web import bench_site

        typer.echo(json.dumps(bench_site(out, folder), indent=2))
    if serve:
        serve_site(out, port)


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
