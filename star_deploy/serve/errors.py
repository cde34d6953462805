"""HTTP errors as one-line JSON: validation (4xx), unavailable replicas (503), the rest (500).

The native routes answer ``{"error": message}``; the OpenAI-compatible routes (``/v1/images/generations``,
``/v1/models``, ``/v1/models/{id}``) and paths the server does not have answer OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, which its clients read."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException


class ServiceUnavailable(Exception):
    """No replica could take the request (all retries failed, or the server is draining)."""


class BadRequest(ValueError):
    """A well-typed request the model cannot serve (answered 400)."""


OPENAI_PATHS = ("/v1/images/generations", "/v1/models")
"""The OpenAI-compatible routes (and, for ``/v1/models``, the routes below it)."""


def error_response(status: int, message: str, openai: bool = False) -> JSONResponse:
    """{"error": message} on one line, or OpenAI's error object with ``openai``."""
    text = " ".join(message.split())
    if not openai:
        return JSONResponse({"error": text}, status_code=status)
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": text, "type": kind, "param": None, "code": None}}, status_code=status)


def is_openai(request: Request) -> bool:
    """Whether ``request`` went to an OpenAI-compatible route, or to none (an OpenAI client's unknown route)."""
    path = request.url.path
    routed = request.scope.get("endpoint") is not None
    return not routed or path.endswith(OPENAI_PATHS) or "/v1/models/" in path


def json_body_expected(exc: RequestValidationError, content_type: str | None) -> bool:
    """Whether the body was refused because it was not sent as JSON (no or another ``Content-Type``)."""
    first = exc.errors()[0] if exc.errors() else {}
    kind = (content_type or "").split(";")[0].strip().lower()
    as_json = kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))
    return tuple(first.get("loc", ())) == ("body",) and isinstance(first.get("input"), bytes) and not as_json


def validation_message(exc: RequestValidationError) -> tuple[int, str]:
    """(status, message) of the first problem: 400 for a body that is not JSON, else 422."""
    first = exc.errors()[0] if exc.errors() else {"msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return 400, f"body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')}); send a JSON object"
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    message = f"{field}: {first['msg']}"
    if first.get("type") == "extra_forbidden":
        message += "; remove it (the fields of each route are in /openapi.json)"
    return 422, message


def install_handlers(app: FastAPI) -> None:
    """Route every error of ``app`` to a one-line JSON body."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type")
        if json_body_expected(exc, content_type):
            got = f"not {content_type}" if content_type else "it was missing"
            message = f"the body must be JSON: send it with the header Content-Type: application/json ({got})"
            return error_response(415, message, openai=is_openai(request))
        return error_response(*validation_message(exc), openai=is_openai(request))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404 and request.scope.get("endpoint") is None:
            message = f"no route {request.method} {request.url.path}; the routes are listed in /openapi.json"
        return error_response(exc.status_code, message, openai=is_openai(request))

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
        response = error_response(503, str(exc), openai=is_openai(request))
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return error_response(400, str(exc), openai=is_openai(request))

    @app.exception_handler(json.JSONDecodeError)
    async def bad_json(request: Request, exc: json.JSONDecodeError) -> JSONResponse:
        message = f"body is not valid JSON ({exc.msg}); send a JSON object"
        return error_response(400, message, openai=is_openai(request))
