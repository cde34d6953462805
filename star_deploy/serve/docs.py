"""The OpenAPI page at /docs with Swagger UI's files served by the server itself (no CDN: works offline)."""

from __future__ import annotations

from pathlib import Path

from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException

ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}
"""The Swagger UI files /docs loads, with their media types."""


def swagger_dir() -> Path:
    """The Swagger UI distribution shipped by the swagger-ui-bundle-v2 package (part of the serve extra)."""
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path))


def docs_page(title: str) -> HTMLResponse:
    """Swagger UI for /openapi.json, loading its script and style from /docs/assets."""
    return get_swagger_ui_html(
        openapi_url="openapi.json",
        title=title,
        swagger_js_url="docs/assets/swagger-ui-bundle.js",
        swagger_css_url="docs/assets/swagger-ui.css",
        swagger_favicon_url="docs/assets/favicon-32x32.png",
    )


def docs_asset(name: str) -> FileResponse:
    """One of Swagger UI's files; 404 for any other name."""
    if name not in ASSETS:
        raise HTTPException(404, f"no asset {name}")
    return FileResponse(swagger_dir() / name, media_type=ASSETS[name], headers={"Cache-Control": "max-age=86400"})
