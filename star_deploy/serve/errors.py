"""HTTP errors as one-line JSON: validation (4xx), unavailable replicas (503), the rest (500)."""

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


def error_response(status: int, message: str) -> JSONResponse:
    """{"error": message} on one line."""
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


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
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(*validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        response = error_response(503, str(exc))
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(json.JSONDecodeError)
    async def bad_json(_: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return error_response(400, f"body is not valid JSON ({exc.msg}); send a JSON object")
