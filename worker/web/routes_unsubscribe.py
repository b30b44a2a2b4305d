"""The email unsubscribe link (GET shows a confirm page) and RFC 8058 one-click (POST): no login needed.

The patient is authenticated by the link itself: an HMAC-signed, expiring token naming her id, so nobody can
unsubscribe someone else. GET changes nothing (mail scanners fetch links); only POST records the opt-out.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse

from worker.errors import ConfigError
from worker.templates import BRAND
from worker.unsubscribe import apply_unsubscribe_token, read_token
from worker.web.deps import AppDep
from worker.web.errors import ApiError, ErrorBody

router = APIRouter(
    prefix="/v1/unsubscribe",
    tags=["patient links"],
    responses={422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)

Token = Annotated[str, Path(pattern=r"^[A-Za-z0-9_\-]{1,800}\.[A-Za-z0-9_\-]{1,100}$")]


def _key(app: AppDep) -> str:
    try:
        return app.settings.require_secret("signing_key")
    except ConfigError as exc:
        raise ApiError(503, "not_configured", "token", f"token: cannot be verified: {exc}") from None


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><h1>{BRAND}</h1><p>{body}</p></body></html>"
    )


@router.get("/{token}", response_class=HTMLResponse)
def confirm_page(token: Token, app: AppDep) -> HTMLResponse:
    """Show a one-button page; following the link alone unsubscribes nobody."""
    read_token(_key(app), token, app.clock.now())  # a bad or expired token is a 422 naming ``token``
    return _page(
        "Unsubscribe",
        f"Stop marketing emails from {BRAND}? Messages about your care are not affected."
        f"<form method='post' action='/v1/unsubscribe/{token}'><button type='submit'>Unsubscribe</button></form>",
    )


@router.post("/{token}", response_class=HTMLResponse)
def unsubscribe(token: Token, app: AppDep) -> HTMLResponse:
    """Record the opt-out (RFC 8058 one-click, or the page's button). Idempotent; answers 200."""
    apply_unsubscribe_token(app.engine, app.clock, _key(app), token)
    return _page("Unsubscribed", "You are unsubscribed from marketing emails. Messages about your care continue.")
