"""The console's pages under ``/console``: thin handlers over the services, rendered by Jinja2 templates.

Every page but sign-in needs a session (else a redirect to sign-in); every POST carries the session's CSRF token
(sign-in, which has no session yet, a double-submit token from its own cookie). Actions with an effect (replay,
cancel) have a confirmation page: its form is the only thing that posts them.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from worker.activity import LedgerItem, NotificationItem, PauseItem, patient_activity
from worker.broker import queue_depths
from worker.campaigns import cancel_campaign
from worker.dead_letters import list_dead_letters, replay_dead_letter
from worker.errors import InvalidInput, NotFound
from worker.metrics.health import provider_health
from worker.notification_report import notification_report
from worker.web.console import sessions, views
from worker.web.deps import AppDep

log = structlog.get_logger(__name__)

HERE = Path(__file__).resolve().parent
COOKIE = "cn_console"
SIGNIN_COOKIE = "cn_console_signin"
PREFIX = "/console"

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals.update(when=views.when, plain=views.plain)

router = APIRouter(prefix=PREFIX, include_in_schema=False)

#: What a redirect after an action may say (a fixed list: nothing from the request is echoed into a page).
NOTICES = {
    "signed-out": "You are signed out.",
    "expired": "Your session ended; sign in again.",
    "replayed": "The dead letter was queued again.",
    "replayed-all": "Every dead letter was queued again.",
    "gone": "That dead letter is no longer there (replayed already?).",
    "cancelled": "The campaign is cancelled; its unsent notifications are cancelled too.",
}

#: Security headers of every console response: no framing, nothing from another origin, nothing cached.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class SignInRequired(Exception):
    """No valid session: the handler answers with a redirect to the sign-in page."""

    def __init__(self, notice: str | None = None) -> None:
        self.notice = notice


class CsrfRefused(Exception):
    """A POST without the form token of its session."""


def _secure(request: Request) -> bool:
    """HTTPS, directly or as a proxy in front says (``X-Forwarded-Proto``): the cookie is then Secure."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def _set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(name, value, path=PREFIX, httponly=True, secure=_secure(request), samesite="strict")


def _clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(name, path=PREFIX, httponly=True, secure=_secure(request), samesite="strict")


def render(request: Request, name: str, *, status: int = 200, **context: Any) -> Response:
    notice = NOTICES.get(request.query_params.get("notice", ""))
    response = templates.TemplateResponse(request, name, {"notice": notice, **context}, status_code=status)
    response.headers.update(HEADERS)
    return response


def redirect(path: str, notice: str | None = None) -> RedirectResponse:
    url = f"{PREFIX}{path}" + (f"?{urlencode({'notice': notice})}" if notice else "")
    response = RedirectResponse(url, status_code=303)
    response.headers.update(HEADERS)
    return response


def operator(request: Request, app: AppDep) -> sessions.Operator:
    """The signed-in operator, or :class:`SignInRequired`."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise SignInRequired
    found = sessions.resume(app.engine, app.clock, app.settings.console, token)
    if found is None:
        raise SignInRequired("expired")
    return found


OperatorDep = Annotated[sessions.Operator, Depends(operator)]


async def form_fields(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the only kind the console's forms send)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return {}
    parsed = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


FormDep = Annotated[dict[str, str], Depends(form_fields)]


def checked(user: OperatorDep, form: FormDep) -> sessions.Operator:
    """The operator of a POST whose form carries the session's CSRF token."""
    if not hmac.compare_digest(form.get("csrf", ""), user.csrf_token):
        raise CsrfRefused
    return user


PostedBy = Annotated[sessions.Operator, Depends(checked)]


# -- static ----------------------------------------------------------------------------------------------------


#: The console's own assets (package data): nothing is loaded from another origin.
STATIC = {"console.css": "text/css", "favicon.svg": "image/svg+xml"}


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        return Response(status_code=404)
    return FileResponse(HERE / "static" / name, media_type=STATIC[name], headers={"Cache-Control": "max-age=3600"})


# -- sign-in and sign-out ----------------------------------------------------------------------------------------


@router.get("")
def home(user: OperatorDep) -> Response:
    return redirect("/patients")


@router.get("/sign-in")
def sign_in_page(request: Request) -> Response:
    token = secrets.token_urlsafe(32)
    response = render(request, "sign_in.html", csrf=token, error=None)
    _set_cookie(request, response, SIGNIN_COOKIE, token)
    return response


@router.post("/sign-in")
def sign_in(request: Request, app: AppDep, form: FormDep) -> Response:
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    if not expected or not hmac.compare_digest(form.get("csrf", ""), expected):
        raise CsrfRefused
    try:
        token, signed_in = sessions.sign_in(app.engine, app.clock, form.get("api_key", ""))
    except sessions.NotAllowed:
        log.warning("console.sign_in_refused")  # never the key
        fresh = secrets.token_urlsafe(32)
        response = render(
            request,
            "sign_in.html",
            status=401,
            csrf=fresh,
            error="That key is unknown or revoked, or its API client lacks the console scope.",
        )
        _set_cookie(request, response, SIGNIN_COOKIE, fresh)
        return response
    log.info("console.signed_in", operator=signed_in.name, key_id=signed_in.key_id)
    sessions.forget_expired(app.engine, app.clock, app.settings.console)
    response = redirect("/patients")
    _set_cookie(request, response, COOKIE, token)
    _clear_cookie(request, response, SIGNIN_COOKIE)
    return response


@router.post("/sign-out")
def sign_out(request: Request, app: AppDep, user: PostedBy) -> Response:
    sessions.sign_out(app.engine, user.session_id)
    log.info("console.signed_out", operator=user.name)
    response = redirect("/sign-in", "signed-out")
    _clear_cookie(request, response, COOKIE)
    return response


# -- patients --------------------------------------------------------------------------------------------------


@router.get("/patients")
def patients(request: Request, app: AppDep, user: OperatorDep, ref: str = "") -> Response:
    ref = ref.strip()
    if ref:
        if views.patient_card(app.engine, ref) is not None:
            return redirect(f"/patients/{_quoted(ref)}")
        return render(request, "patients.html", status=404, user=user, active="patients", ref=ref, missing=True)
    return render(request, "patients.html", user=user, active="patients", ref="", missing=False)


def _quoted(ref: str) -> str:
    return quote(ref, safe="")


@router.get("/patients/{ref:path}")
def patient(request: Request, app: AppDep, user: OperatorDep, ref: str, cursor: str | None = None) -> Response:
    card = views.patient_card(app.engine, ref)
    if card is None:
        return render(request, "patients.html", status=404, user=user, active="patients", ref=ref, missing=True)
    try:
        page = patient_activity(app.engine, card.id, cursor=cursor, limit=25)
    except InvalidInput:
        return render(request, "error.html", status=422, user=user, message="That page link is not valid.")
    return render(
        request,
        "patient.html",
        user=user,
        active="patients",
        card=card,
        items=page.items,
        next_cursor=page.next_cursor,
        first_page=cursor is None,
        ref_path=_quoted(card.ref),
        is_notification=lambda item: isinstance(item, NotificationItem),
        is_ledger=lambda item: isinstance(item, LedgerItem),
        is_pause=lambda item: isinstance(item, PauseItem),
    )


@router.get("/notifications/{notification_id}")
def notification(request: Request, app: AppDep, user: OperatorDep, notification_id: int) -> Response:
    try:
        if not 0 < notification_id < 2**63:
            raise NotFound(f"notification {notification_id} does not exist")
        report = notification_report(app.engine, notification_id)
    except NotFound:
        return render(request, "error.html", status=404, user=user, message="No notification with that id.")
    ref = views.patient_ref_of(app.engine, int(report["patient_id"]))
    return render(
        request,
        "notification.html",
        user=user,
        active="patients",
        report=report,
        ref=ref,
        ref_path=_quoted(ref) if ref else None,
    )


# -- dead letters ----------------------------------------------------------------------------------------------


def _letters(app: AppDep) -> list[views.DeadLetterView]:
    return views.with_reasons(app.engine, list_dead_letters(app.broker, app.settings.queue_name))


@router.get("/dead-letters")
def dead_letters(request: Request, app: AppDep, user: OperatorDep) -> Response:
    return render(request, "dead_letters.html", user=user, active="dead-letters", letters=_letters(app))


@router.get("/dead-letters/replay-all")
def replay_all_confirm(request: Request, app: AppDep, user: OperatorDep) -> Response:
    letters = _letters(app)
    return render(
        request,
        "confirm.html",
        user=user,
        active="dead-letters",
        title="Replay every dead letter?",
        lines=[f"{len(letters)} dead letter(s) will be queued again; their failed notifications go back to pending."],
        action=f"{PREFIX}/dead-letters/replay-all",
        button="Replay all",
        back=f"{PREFIX}/dead-letters",
    )


@router.post("/dead-letters/replay-all")
def replay_all(app: AppDep, user: PostedBy) -> Response:
    for view in _letters(app):
        _replay(app, user, view.letter.message_id)
    return redirect("/dead-letters", "replayed-all")


@router.get("/dead-letters/{message_id}")
def dead_letter(request: Request, app: AppDep, user: OperatorDep, message_id: str) -> Response:
    view = next((v for v in _letters(app) if v.letter.message_id == message_id), None)
    if view is None:
        return render(request, "error.html", status=404, user=user, message="No dead letter with that id.")
    return render(request, "dead_letter.html", user=user, active="dead-letters", view=view)


@router.get("/dead-letters/{message_id}/replay")
def replay_confirm(request: Request, app: AppDep, user: OperatorDep, message_id: str) -> Response:
    view = next((v for v in _letters(app) if v.letter.message_id == message_id), None)
    if view is None:
        return redirect("/dead-letters", "gone")
    about = f"notification {view.letter.notification_id}" if view.letter.notification_id else "no notification"
    return render(
        request,
        "confirm.html",
        user=user,
        active="dead-letters",
        title="Replay this dead letter?",
        lines=[f"Message {message_id} ({about}) will be queued again."],
        action=f"{PREFIX}/dead-letters/{_quoted(message_id)}/replay",
        button="Replay",
        back=f"{PREFIX}/dead-letters/{_quoted(message_id)}",
    )


@router.post("/dead-letters/{message_id}/replay")
def replay(app: AppDep, user: PostedBy, message_id: str) -> Response:
    return redirect("/dead-letters", "replayed" if _replay(app, user, message_id) else "gone")


def _replay(app: AppDep, user: sessions.Operator, message_id: str) -> bool:
    letter = replay_dead_letter(
        app.broker, app.engine, app.clock, app.enqueue, queue_name=app.settings.queue_name, message_id=message_id
    )
    if letter is not None:  # who did what, for the audit trail
        log.info("console.dead_letter_replayed", operator=user.name, notification_id=letter.notification_id)
    return letter is not None


# -- provider health -------------------------------------------------------------------------------------------


@router.get("/health")
def health(request: Request, app: AppDep, user: OperatorDep) -> Response:
    cfg = app.settings.provider
    names = [provider.name for providers in app.providers.values() for provider in providers]
    rows = provider_health(
        app.engine,
        app.clock,
        names,
        app.deps.breakers,
        window=timedelta(minutes=app.settings.console.health_window_minutes),
        threshold=cfg.breaker_failure_threshold,
        cooldown=timedelta(seconds=cfg.breaker_cooldown_seconds),
    )
    return render(
        request,
        "health.html",
        user=user,
        active="health",
        providers=rows,
        window=app.settings.console.health_window_minutes,
        queues=sorted(queue_depths(app.broker).items()),
    )


# -- campaigns -------------------------------------------------------------------------------------------------


@router.get("/campaigns")
def campaigns(request: Request, app: AppDep, user: OperatorDep) -> Response:
    return render(
        request, "campaigns.html", user=user, active="campaigns", campaigns=views.recent_campaigns(app.engine)
    )


@router.get("/campaigns/{campaign_id}/cancel")
def cancel_confirm(request: Request, app: AppDep, user: OperatorDep, campaign_id: int) -> Response:
    try:
        progress = views.campaign_progress(app.engine, campaign_id) if 0 < campaign_id < 2**31 else None
    except NotFound:
        progress = None
    if progress is None:
        return render(request, "error.html", status=404, user=user, message="No campaign with that id.")
    return render(
        request,
        "confirm.html",
        user=user,
        active="campaigns",
        title=f"Cancel the campaign “{progress.stats.name}”?",
        lines=[
            "Nothing more is sent for it, and it cannot be launched again.",
            f"{progress.open} notification(s) not yet sent will be cancelled.",
        ],
        action=f"{PREFIX}/campaigns/{campaign_id}/cancel",
        button="Cancel the campaign",
        back=f"{PREFIX}/campaigns",
    )


@router.post("/campaigns/{campaign_id}/cancel")
def cancel(request: Request, app: AppDep, user: PostedBy, campaign_id: int) -> Response:
    try:
        if not 0 < campaign_id < 2**31:
            raise NotFound(f"campaign {campaign_id} does not exist")
        cancel_campaign(app.engine, app.clock, campaign_id)
        log.info("console.campaign_cancelled", operator=user.name, campaign_id=campaign_id)
    except NotFound:
        return render(request, "error.html", status=404, user=user, message="No campaign with that id.")
    return redirect("/campaigns", "cancelled")


# -- wiring ----------------------------------------------------------------------------------------------------


def install_console(web: FastAPI) -> None:
    """Mount the console and answer its two refusals as pages, not JSON."""

    @web.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired) -> Response:
        response = redirect("/sign-in", exc.notice)
        if exc.notice:
            _clear_cookie(request, response, COOKIE)
        return response

    @web.exception_handler(CsrfRefused)
    async def _csrf(request: Request, exc: CsrfRefused) -> Response:
        return render(
            request,
            "error.html",
            status=403,
            message="The form was stale or not from this console. Go back, reload the page and try again.",
        )

    web.include_router(router)
