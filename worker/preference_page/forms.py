"""The save form's CSRF-safe token: stateless, signed, bound to her link and to what the page showed.

``<issued unix seconds>.<shown state>.<tag>``, the tag being :func:`worker.unsubscribe.mac` under the signing key
over a purpose label, the link token, the issue time and the shown state, so it cannot be minted without the key,
moved to another patient's link, replayed after ``form_ttl``, or altered to change boxes she did not touch. The
page uses no cookie at all: the token travels in a hidden field, and the web layer also refuses a cross-site POST.
"""

from __future__ import annotations

import base64
import hmac
import re
from datetime import datetime, timedelta

from worker.errors import InvalidInput
from worker.unsubscribe import mac

PURPOSE = b"carenotify/preference-form/v1\x00"
_SHAPE = re.compile(r"^(\d{1,12})\.([01]{1,64})\.([A-Za-z0-9_-]{22})$")


class FormExpired(InvalidInput):
    """A genuine form left open past its time: she is shown the page again, nothing saved."""

    def __init__(self) -> None:
        super().__init__("csrf", "the form has expired")


def _tag(key: str, link_token: str, issued: int, shown: str) -> str:
    message = PURPOSE + f"{link_token}\x00{issued}\x00{shown}".encode()
    return base64.urlsafe_b64encode(mac(key, message)[:16]).rstrip(b"=").decode()


def make_form_token(key: str, *, link_token: str, shown: str, now: datetime) -> str:
    issued = int(now.timestamp())
    return f"{issued}.{shown}.{_tag(key, link_token, issued, shown)}"


def read_form_token(key: str, value: str | None, *, link_token: str, now: datetime, ttl: timedelta) -> str:
    """The shown state the form was issued with; raises :class:`InvalidInput` (``csrf``) or :class:`FormExpired`."""
    match = _SHAPE.match(value or "")
    if match is None:
        raise InvalidInput("csrf", "missing or malformed")
    issued, shown, tag = int(match.group(1)), match.group(2), match.group(3)
    if not hmac.compare_digest(tag, _tag(key, link_token, issued, shown)):
        raise InvalidInput("csrf", "does not match this link")
    age = now.timestamp() - issued
    if age > ttl.total_seconds() or age < -300:
        raise FormExpired()
    return shown
