"""``GET /p/<token>`` shows her page (changes nothing: mail scanners and link previews fetch links) and
``POST /p/<token>`` saves it, then redirects to the page (so a reload never saves twice).

The link is the only credential: a bad, expired or erased-patient link gets a friendly page in her language and
changes nothing. Every answer carries strict headers: CSP allowing only our own stylesheet, no referrer (the
token is in the URL), noindex, no caching. HTML pages, not API: they are left out of the OpenAPI schema.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, select_autoescape

from worker.bootstrap import App
from worker.errors import ConfigError, InvalidInput, NotFound
from worker.preference_page import text
from worker.preference_page.forms import FormExpired, make_form_token, read_form_token
from worker.preference_page.grid import shown_state
from worker.preference_page.links import PATH_PREFIX, LinkExpired, LinkInvalid, read_token
from worker.preference_page.service import PageState, load_page, patient_locale, save_page
from worker.web.deps import AppDep
from worker.web.preference_page import view

router = APIRouter(include_in_schema=False)

CSS_PATH = f"{PATH_PREFIX}static/page.css"
ICON_PATH = f"{PATH_PREFIX}static/icon.svg"
#: Only our own stylesheet; no script, frame, image, font or connection anywhere; forms post back to us only.
CSP = (
    "default-src 'none'; style-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'; img-src 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow, noarchive",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}
#: Fields of the form besides the boxes.
_FORM_FIELDS = frozenset({"csrf", "lang"})


@cache
def _templates() -> Jinja2Templates:
    env = Environment(
        loader=PackageLoader("worker.web.preference_page", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return Jinja2Templates(env=env)


@cache
def _asset(name: str) -> bytes:
    return files("worker.web.preference_page").joinpath("static", name).read_bytes()


def _key(app: App) -> str | None:
    try:
        return app.settings.require_secret("signing_key")
    except ConfigError:
        return None


def _html(request: Request, template: str, lang: str, code: int = 200, **context: Any) -> Response:
    other = "es" if lang == "en" else "en"
    context |= {
        "lang": lang,
        "t": text.words(lang),
        "other_lang": other,
        "other_lang_name": text.LANGUAGE_NAMES[other],
        "css_url": CSS_PATH,
        "icon_url": ICON_PATH,
    }
    return _templates().TemplateResponse(request, template, context, status_code=code, headers=SECURITY_HEADERS)


def _message(request: Request, lang: str, code: int, title_key: str, body_key: str) -> Response:
    words = text.words(lang)
    return _html(request, "message.html", lang, code, title=words[title_key], body=words[body_key])


def _page(
    request: Request,
    app: App,
    key: str,
    token: str,
    state: PageState,
    lang: str,
    *,
    status: str | None = None,
    notice: str | None = None,
) -> Response:
    words = text.words(lang)
    csrf = make_form_token(key, link_token=token, shown=shown_state(state.cells), now=app.clock.now())
    return _html(
        request,
        "page.html",
        lang,
        title=words["title"],
        groups=view.groups(state.cells, lang),
        csrf=csrf,
        action=f"{PATH_PREFIX}{token}",
        sms_stopped=view.sms_stopped(state.cells),
        status=status,
        notice=notice,
    )


def _open(request: Request, app: App, token: str, lang: str | None) -> tuple[str, PageState] | Response:
    """Her key and page, or the friendly page that says why not (and changes nothing)."""
    fallback = text.from_accept_language(request.headers.get("accept-language"))
    key = _key(app)
    if key is None:
        return _message(request, text.language(lang, fallback), 503, "unavailable_title", "unavailable_body")
    try:
        link = read_token(key, token, app.clock.now())
    except LinkExpired as expired:
        locale = patient_locale(app.engine, expired.patient_id)
        return _message(request, text.language(lang, locale, fallback), 410, "expired_title", "expired_body")
    except LinkInvalid:
        return _message(request, text.language(lang, fallback), 404, "invalid_title", "invalid_body")
    try:
        return key, load_page(app.engine, link.patient_id)
    except NotFound:
        return _message(request, text.language(lang, fallback), 404, "invalid_title", "gone_body")


_ASSET_HEADERS = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}


@router.get(CSS_PATH)
def stylesheet() -> Response:
    """The page's stylesheet, served by us (no CDN, no web font)."""
    return Response(_asset("page.css"), media_type="text/css", headers=_ASSET_HEADERS)


@router.get(ICON_PATH)
def icon() -> Response:
    """Its icon, so a browser asking for one gets ours instead of a 404."""
    return Response(_asset("icon.svg"), media_type="image/svg+xml", headers=_ASSET_HEADERS)


@router.api_route(PATH_PREFIX + "{token}", methods=["GET", "HEAD"])  # link checkers and previews send HEAD
def show(request: Request, token: str, app: AppDep, lang: str | None = None, saved: str | None = None) -> Response:
    """Her page, in ``lang`` if asked, else her locale. Reads only."""
    opened = _open(request, app, token, lang)
    if isinstance(opened, Response):
        return opened
    key, state = opened
    language = text.language(lang, state.locale)
    words = text.words(language)
    status = {"1": words["saved"], "0": words["nothing_changed"]}.get(saved or "")
    return _page(request, app, key, token, state, language, status=status)


async def _form(request: Request) -> dict[str, list[str]] | None:
    """The posted form (urlencoded; the body is already size-limited), or ``None`` if it cannot be read."""
    try:
        raw = (await request.body()).decode("utf-8")
        return parse_qs(raw, keep_blank_values=True, max_num_fields=64, strict_parsing=bool(raw))
    except ValueError:
        return None


FormDep = Annotated[dict[str, list[str]] | None, Depends(_form)]


@router.post(PATH_PREFIX + "{token}")
def save(request: Request, token: str, app: AppDep, form: FormDep) -> Response:
    """Save what she changed; then show the page again (303), saying whether anything changed."""
    lang = (form or {}).get("lang", [None])[0]
    if request.headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
        return _message(request, text.language(lang), 403, "refused_title", "refused_body")
    opened = _open(request, app, token, lang)
    if isinstance(opened, Response):
        return opened
    key, state = opened
    language = text.language(lang, state.locale)
    if form is None or any(len(values) != 1 for values in form.values()):
        return _message(request, language, 400, "refused_title", "refused_body")
    try:
        shown = read_form_token(
            key,
            form.get("csrf", [""])[0],
            link_token=token,
            now=app.clock.now(),
            ttl=timedelta(hours=app.settings.preference_page.form_ttl_hours),
        )
    except FormExpired:
        return _page(request, app, key, token, state, language, notice=text.words(language)["form_expired"])
    except InvalidInput:
        return _message(request, language, 400, "refused_title", "refused_body")
    ticked = set(form) - _FORM_FIELDS
    try:
        changed = save_page(app.engine, app.clock, patient_id=state.patient_id, shown=shown, ticked=ticked)
    except InvalidInput:
        return _message(request, language, 400, "refused_title", "refused_body")
    except NotFound:
        return _message(request, language, 404, "invalid_title", "gone_body")
    target = f"{PATH_PREFIX}{token}?lang={language}&saved={1 if changed else 0}"
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
