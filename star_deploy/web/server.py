"""Serve a site folder on 127.0.0.1 with the headers that make it cross-origin isolated (WebAssembly threads)."""

from __future__ import annotations

import functools
import logging
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
"""What a host must send for SharedArrayBuffer, hence onnxruntime-web's WebAssembly threads."""
TYPES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".gz": "application/octet-stream",
}


class SiteHandler(SimpleHTTPRequestHandler):
    """Static files with the isolation headers, exact JavaScript types and no request log on stderr."""

    extensions_map = SimpleHTTPRequestHandler.extensions_map | TYPES

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)


def site_server(folder: Path, port: int = 0, handler: type[SiteHandler] = SiteHandler) -> ThreadingHTTPServer:
    """A server of ``folder`` on 127.0.0.1:``port`` (0: a free port); call ``serve_forever`` to run it."""
    return ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=str(folder)))
