"""One pooled httpx client per process (and one HTTP/2 client for APNs), with explicit timeouts.

Adapters receive the client through their constructor; the bootstrap owns its lifecycle.
Also: the google-auth transport over httpx, so OAuth token refreshes use the same pool (and respx in tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import google.auth.transport
import httpx

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)

#: Errors raised before a request could have reached the provider: always safe to repeat at once.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class HttpClients:
    """The process's clients: ``default`` (HTTP/1.1 + keep-alive) and ``http2`` (APNs)."""

    default: httpx.Client
    http2: httpx.Client

    def close(self) -> None:
        self.default.close()
        self.http2.close()


def build_clients(timeout: float = 10.0) -> HttpClients:
    to = httpx.Timeout(timeout, connect=min(5.0, timeout))
    return HttpClients(
        default=httpx.Client(timeout=to, limits=DEFAULT_LIMITS),
        http2=httpx.Client(timeout=to, limits=DEFAULT_LIMITS, http2=True),
    )


#: How often a request that surely never left is tried within one send, and the first pause between tries.
BLIP_ATTEMPTS = 3
BLIP_FIRST_WAIT_SECONDS = 0.05


def send_with_blip_retry(
    client: httpx.Client, request: httpx.Request, *, sleep: Callable[[float], None] = time.sleep
) -> httpx.Response:
    """Send, retrying a few times within a second only when the request surely never left (connect errors).

    Longer waits go through the broker; a request that may have been received is never repeated here. A plain
    loop, not a retry decorator: building one for every send cost more than a tenth of the send's own CPU.
    """
    for attempt in range(BLIP_ATTEMPTS - 1):
        try:
            return client.send(request)
        except NOT_SENT_ERRORS:
            sleep(BLIP_FIRST_WAIT_SECONDS * 2**attempt)
    return client.send(request)  # the last try: its error is the caller's


def retry_after_seconds(headers: Mapping[str, str], now: datetime) -> float | None:
    """Parse ``Retry-After`` (seconds or an HTTP date)."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - now).total_seconds())
    except (TypeError, ValueError):
        return None


class _GoogleResponse(google.auth.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class GoogleAuthRequest(google.auth.transport.Request):
    """google-auth's transport interface over our httpx client."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> google.auth.transport.Response:
        try:
            response = self._client.request(method, url, content=body, headers=headers, timeout=timeout or 10.0)
        except httpx.HTTPError as exc:
            import google.auth.exceptions

            raise google.auth.exceptions.TransportError(  # type: ignore[no-untyped-call]
                f"token endpoint unreachable: {type(exc).__name__}"
            ) from exc
        return _GoogleResponse(response)
