"""Provider callbacks: Twilio inbound SMS and status callbacks, SendGrid events; signed, checked here.

A request whose signature does not verify is refused (403) before anything is read into the database. A valid
request seen before (the same inbound MessageSid, MessageSid + status, ``sg_event_id``) finds its
:class:`WebhookReceipt` and changes nothing; SendGrid's signed timestamp must also be recent, so an old capture
cannot be replayed. The URL Twilio signs is the one we gave it, pinned by a setting
(``provider.twilio_status_callback_url``, ``provider.twilio_inbound_url``) and never rebuilt from the request's Host
header; without it the route answers 503.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col
from starlette.concurrency import run_in_threadpool

from integrations.sendgrid import verify_event_signature
from integrations.twilio import verify_twilio_signature
from worker.bootstrap import App
from worker.clock import Clock
from worker.db import session_scope
from worker.errors import ConfigError
from worker.models_api import WebhookReceipt
from worker.receipts import apply_sendgrid_events, apply_twilio_status
from worker.sms_inbound import handle_inbound_sms
from worker.web.errors import ApiError, ErrorBody

router = APIRouter(
    prefix="/webhooks",
    tags=["provider webhooks"],
    responses={403: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)

TWILIO_SIGNATURE = "X-Twilio-Signature"
SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
#: How old a signed SendGrid timestamp may be (and how far ahead, for clock skew).
SENDGRID_MAX_AGE = timedelta(minutes=5)

T = TypeVar("T")


def _secret(app: App, name: str, header: str) -> str:
    try:
        return app.settings.require_secret(name)
    except ConfigError as exc:
        raise ApiError(503, "not_configured", header, f"{header}: cannot be verified: {exc}") from None


def _signed_url(configured: str | None, setting: str) -> str:
    """The public URL Twilio signs, as configured. Never rebuilt from the request: the Host header is the
    caller's to choose, so a signature captured for another host (staging, a test account) would verify."""
    if not configured:
        raise ApiError(
            503,
            "not_configured",
            TWILIO_SIGNATURE,
            f"{TWILIO_SIGNATURE}: cannot be verified: set CARENOTIFY_PROVIDER__{setting} to the URL Twilio posts to",
        )
    return configured


async def _body(request: Request) -> bytes:
    """The raw body; its size was limited before a byte was read (``web.max_webhook_body_bytes``)."""
    return await request.body()


def _form(body: bytes) -> dict[str, str]:
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body)))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "invalid_input", "body", "body: not a form-encoded callback") from None


def _signature(request: Request, header: str) -> str | None:
    """The signature header, or None when it cannot be one: signatures are base64 (ASCII), and a header with
    other bytes would make the constant-time compare raise (a 500) instead of failing (a 403)."""
    value = request.headers.get(header)
    return value if value is not None and value.isascii() else None


def _event_id(value: object) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool) and str(value) != ""


def _callback_field(form: dict[str, str], *names: str) -> str:
    """The first of ``names`` in a Twilio form, refused (400 naming it) unless it is short printable ASCII: a
    SID or a status always is, and anything else would only reach the database to be refused there."""
    value = next((form[name] for name in names if form.get(name)), "")
    if not value:
        raise ApiError(400, "invalid_input", names[0], f"{names[0]}: missing from the callback")
    if len(value) > 64 or not (value.isascii() and value.isprintable()):
        raise ApiError(400, "invalid_input", names[0], f"{names[0]}: not a Twilio identifier")
    return value


def receipt_key(key: str) -> str:
    """What is stored for a provider's event id: as sent when it is short printable ASCII (they all are), else its
    SHA-256, so a long id or one with bytes PostgreSQL refuses (NUL) is still recorded, and never cut short
    (two ids sharing their first 200 characters are two events)."""
    if len(key) <= 200 and key.isascii() and key.isprintable():
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def claim_receipts(engine: Engine, clock: Clock, provider: str, keys: Sequence[str]) -> list[str]:
    """Record the keys not seen before and return them (in order); one transaction per key so a seen key
    does not undo the others."""
    fresh: list[str] = []
    for key in dict.fromkeys(keys):
        try:
            with session_scope(engine) as session:
                session.add(WebhookReceipt(provider=provider, dedupe_key=receipt_key(key), received_at=clock.now()))
        except IntegrityError:
            continue
        fresh.append(key)
    return fresh


@contextmanager
def _released_on_error(engine: Engine, provider: str, keys: Sequence[str]) -> Iterator[None]:
    """If applying fails, forget the receipts so the provider's retry is applied, not ignored."""
    try:
        yield
    except BaseException:
        with session_scope(engine) as session:
            session.execute(
                delete(WebhookReceipt).where(
                    col(WebhookReceipt.provider) == provider,
                    col(WebhookReceipt.dedupe_key).in_([receipt_key(key) for key in keys]),
                )
            )
        raise


def _apply_once(app: App, provider: str, keys: Sequence[str], apply: Callable[[list[str]], T]) -> T:
    """Claim the receipts, then apply with the fresh keys; a failure releases them."""
    fresh = claim_receipts(app.engine, app.clock, provider, keys)
    with _released_on_error(app.engine, provider, fresh):
        return apply(fresh)


@router.post("/twilio/status", responses={200: {"description": "applied, ignored or duplicate"}})
async def twilio_status(request: Request) -> JSONResponse:
    """A Twilio status callback (``delivered`` / ``undelivered`` / ``failed``) for an SMS we sent."""
    app: App = request.app.state.app
    token = _secret(app, "twilio_auth_token", TWILIO_SIGNATURE)
    form = _form(await _body(request))
    url = _signed_url(app.settings.provider.twilio_status_callback_url, "TWILIO_STATUS_CALLBACK_URL")
    if not verify_twilio_signature(token, url, form, _signature(request, TWILIO_SIGNATURE)):
        raise ApiError(403, "bad_signature", TWILIO_SIGNATURE, f"{TWILIO_SIGNATURE}: does not verify")
    sid = _callback_field(form, "MessageSid", "SmsSid")
    status = _callback_field(form, "MessageStatus", "SmsStatus").lower()
    error_code = form.get("ErrorCode", "")
    if error_code and not (error_code.isascii() and error_code.isdigit() and len(error_code) <= 10):
        raise ApiError(400, "invalid_input", "ErrorCode", "ErrorCode: not a Twilio error code")

    def apply(fresh: list[str]) -> str:
        return apply_twilio_status(app.engine, app.clock, form) if fresh else "duplicate"

    result = await run_in_threadpool(_apply_once, app, "twilio_status", [f"{sid}:{status}"], apply)
    return JSONResponse({"result": result})


#: Twilio wants TwiML back; an empty response sends no reply from Twilio itself (ours goes through the outbox).
_EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


@router.post(
    "/twilio/sms",
    response_class=Response,
    responses={200: {"content": {"text/xml": {}}, "description": "empty TwiML"}, 400: {"model": ErrorBody}},
)
async def twilio_inbound_sms(request: Request) -> Response:
    """A text from a patient: STOP-family and plain-language revocations opt out, START opts in, HELP answers."""
    app: App = request.app.state.app
    token = _secret(app, "twilio_auth_token", TWILIO_SIGNATURE)
    url = _signed_url(app.settings.provider.twilio_inbound_url, "TWILIO_INBOUND_URL")
    form = _form(await _body(request))
    if not verify_twilio_signature(token, url, form, _signature(request, TWILIO_SIGNATURE)):
        raise ApiError(403, "bad_signature", TWILIO_SIGNATURE, f"{TWILIO_SIGNATURE}: does not verify")
    for field in ("MessageSid", "From"):
        _callback_field(form, field)

    def apply(fresh: list[str]) -> None:
        if fresh:
            handle_inbound_sms(app.engine, app.clock, app.enqueue, from_number=form["From"], body=form.get("Body", ""))

    await run_in_threadpool(_apply_once, app, "twilio_sms", [form["MessageSid"]], apply)
    return Response(_EMPTY_TWIML, media_type="text/xml")


@router.post("/sendgrid/events", responses={200: {"description": "counts of what each event did"}})
async def sendgrid_events(request: Request) -> JSONResponse:
    """A batch from SendGrid's Event Webhook: deliveries, bounces, unsubscribes and spam reports."""
    app: App = request.app.state.app
    public_key = app.settings.provider.sendgrid_event_public_key
    if not public_key:
        raise ApiError(
            503,
            "not_configured",
            SENDGRID_SIGNATURE,
            f"{SENDGRID_SIGNATURE}: cannot be verified: set CARENOTIFY_PROVIDER__SENDGRID_EVENT_PUBLIC_KEY",
        )
    body = await _body(request)
    timestamp = request.headers.get(SENDGRID_TIMESTAMP)
    if not verify_event_signature(public_key, body, _signature(request, SENDGRID_SIGNATURE), timestamp):
        raise ApiError(403, "bad_signature", SENDGRID_SIGNATURE, f"{SENDGRID_SIGNATURE}: does not verify")
    assert timestamp is not None  # verified above
    now = app.clock.now().timestamp()
    plausible = timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12  # Unix seconds
    if not plausible or abs(now - int(timestamp)) > SENDGRID_MAX_AGE.total_seconds():
        raise ApiError(403, "stale", SENDGRID_TIMESTAMP, f"{SENDGRID_TIMESTAMP}: too old or in the future")
    try:
        events = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to parse
        raise ApiError(400, "invalid_input", "body", "body: not JSON") from None
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise ApiError(400, "invalid_input", "body", "body: must be a JSON array of event objects")

    # SendGrid's event ids are strings; anything else cannot be one (and is applied without a receipt).
    keyed = {str(e["sg_event_id"]): e for e in events if _event_id(e.get("sg_event_id"))}
    unkeyed = [e for e in events if not _event_id(e.get("sg_event_id"))]

    def apply(fresh: list[str]) -> dict[str, int]:
        batch: list[dict[str, Any]] = [keyed[k] for k in fresh] + unkeyed
        counts = apply_sendgrid_events(app.engine, app.clock, batch) if batch else {}
        duplicates = len(keyed) - len(fresh)
        if duplicates:
            counts["duplicate"] = duplicates
        return counts

    counts = await run_in_threadpool(_apply_once, app, "sendgrid", list(keyed), apply)
    return JSONResponse({"result": counts})
