"""One error shape for every 4xx: ``{"error": code, "field": name, "message": text}``.

The message names the field and what is wrong with it; it never echoes the value sent (it may be a phone
number or an email address), which is why FastAPI's default validation body (that carries ``input``) is
replaced here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from worker.errors import IllegalTransition, InvalidInput, NotFound

log = structlog.get_logger(__name__)

#: Where FastAPI says a parameter came from; not part of the field's name.
_LOCATIONS = ("body", "query", "path", "header", "cookie")


class ErrorBody(BaseModel):
    """What every refused request gets back (documented in the OpenAPI schema)."""

    error: str
    field: str
    message: str


class ApiError(Exception):
    """Raised by routes to refuse a request with a status, the field at fault and a PHI-free message."""

    def __init__(
        self, status_code: int, error: str, field: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.field = field
        self.message = message
        self.headers = headers or {}


def error_response(status_code: int, error: str, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "field": field, "message": message}, status_code=status_code)


@contextmanager
def not_found_as(field: str) -> Iterator[None]:
    """Turn a service's NotFound into a 404 naming the request field that referenced the missing record."""
    try:
        yield
    except NotFound as exc:
        raise ApiError(404, "not_found", field, str(exc)) from None


def field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "devices", 0, "token")`` -> ``devices.0.token``; a missing body is ``body``."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in _LOCATIONS:
        parts = parts[1:]
    return ".".join(parts) or "body"


#: Default field per status for errors raised by the framework itself (unknown route, wrong method, a body that
#: cannot be parsed, e.g. JSON nested too deeply, or one over the size limit).
_FRAMEWORK_FIELD = {400: "body", 404: "path", 405: "method", 413: "body", 415: "Content-Type"}
_FRAMEWORK_ERROR = {404: "not_found", 413: "too_large"}


def install_error_handlers(web: FastAPI) -> None:
    @web.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        response = error_response(exc.status_code, exc.error, exc.field, exc.message)
        response.headers.update(exc.headers)
        return response

    @web.exception_handler(InvalidInput)
    async def _invalid(_request: Request, exc: InvalidInput) -> JSONResponse:
        return error_response(422, "invalid_input", exc.field, str(exc))

    @web.exception_handler(NotFound)
    async def _not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, "not_found", "path", str(exc))

    @web.exception_handler(IllegalTransition)
    async def _conflict(_request: Request, exc: IllegalTransition) -> JSONResponse:
        return error_response(409, "conflict", "state", str(exc))

    @web.exception_handler(IntegrityError)
    async def _race(_request: Request, exc: IntegrityError) -> JSONResponse:
        # Two requests created the same record at once; the transaction rolled back, so a retry is safe.
        log.warning("web.integrity_conflict", error=type(exc.orig).__name__)
        return error_response(409, "conflict", "body", "body: a concurrent request wrote the same record; retry")

    @web.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                # A body that is not JSON at all has no field; FastAPI's loc is then a character offset.
                "field": "body" if err.get("type") == "json_invalid" else field_name(err.get("loc", ())),
                "message": str(err.get("msg", "invalid")),
            }
            for err in exc.errors()
        ]
        first = problems[0] if problems else {"field": "body", "message": "invalid request"}
        body = {
            "error": "invalid_input",
            "field": first["field"],
            "message": f"{first['field']}: {first['message']}",
            "problems": problems,
        }
        return JSONResponse(body, status_code=422)

    @web.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        field = _FRAMEWORK_FIELD.get(exc.status_code, "request")
        error = _FRAMEWORK_ERROR.get(exc.status_code, "http_error")
        response = error_response(exc.status_code, error, field, f"{field}: {exc.detail}")
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response
