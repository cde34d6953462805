"""HTTP errors as one-line JSON: validation (4xx), unavailable replicas (503), the rest (500).

The native routes answer ``{"error": message}``; the OpenAI-compatible routes (``/v1/images/generations``,
``/v1/models``) answer OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, which its clients read."""

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


def error_response(status: int, message: str, openai: bool = False) -> JSONResponse:
    """{"error": message} on one line, or OpenAI's error object with ``openai``."""
    text = " ".join(message.split())
    if not openai:
        return JSONResponse({"error": text}, status_code=status)
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": text, "type": kind, "param": None, "code": None}}, status_code=status)


def is_openai(request: Request) -> bool:
    """Whether ``request`` went to an OpenAI-compatible route."""
    return request.url.path.endswith(OPENAI_PATHS)


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
        return error_response(*validation_message(exc), openai=is_openai(request))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), openai=is_openai(request))

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
