"""The real bulk adapters against the loopback sink the benchmarks use: counted per recipient, answered in each
provider's shape, refusals refusing the whole request."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bench.sink import INAPP_BATCH, SENDGRID, SINGLE, Sink
from integrations.base import NOT_SENT, OutboundMessage, Outcome
from integrations.inapp import InAppProvider
from integrations.sendgrid import SendGridEmailProvider
from tests.integrations.conftest import make_message
from worker.categories import Channel
from worker.clock import FrozenClock


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


def _email(n: int) -> OutboundMessage:
    url = f"https://notify.example/v1/unsubscribe/t{n}"
    return make_message(
        Channel.EMAIL,
        notification_id=n,
        idempotency_key=f"campaign:1:{n}:email",
        category="marketing",
        address=f"p{n}@example.org",
        platform=None,
        title="Join a free class",
        body=f"New group classes are open for sign-up in the app.\n\nUnsubscribe: {url}",
        data={"unsubscribe_url": url},
        promotional=True,
    )


def test_sendgrid_bulk_and_single_sends_are_counted_per_recipient(sink: Sink, client: httpx.Client) -> None:
    sendgrid = SendGridEmailProvider(
        client=client, clock=FrozenClock(), api_key="k", from_email="care@partum.example", base_url=sink.base_url
    )
    results = sendgrid.send_many(messages=[_email(n) for n in range(1, 6)])
    single = sendgrid.send(message=_email(6))

    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 5 and single.outcome is Outcome.ACCEPTED
    assert len({r.provider_ref for r in results}) == 1 and single.provider_ref not in {r.provider_ref for r in results}
    assert sorted(sink.arrivals) == [str(n) for n in range(1, 7)]
    assert sink.requests == {SENDGRID: 2}
    assert sink.duplicates() == 0
    assert [c.status for c in sink.calls] == [202] * 6


def test_inapp_batches_are_counted_per_key_and_answered_per_item(sink: Sink, client: httpx.Client) -> None:
    inapp = InAppProvider(client=client, clock=FrozenClock(), url=sink.url, token="t", max_batch=3)
    messages = [make_message(Channel.INAPP, idempotency_key=f"k{n}", address=f"pt-{n}") for n in range(7)]
    results = inapp.send_many(messages=messages)

    assert [(r.outcome, r.provider_ref) for r in results] == [(Outcome.ACCEPTED, f"k{n}") for n in range(7)]
    assert set(sink.received) == {f"k{n}" for n in range(7)}
    assert sink.requests == {INAPP_BATCH: 3}
    inapp.send(message=messages[0])
    assert sink.requests[SINGLE] == 1 and sink.duplicates() == 1


def test_a_refused_bulk_request_refuses_every_recipient_in_it(sink: Sink, client: httpx.Client) -> None:
    inapp = InAppProvider(client=client, clock=FrozenClock(), url=sink.url, token="t", max_batch=2)
    sink.fail_plan.append(503)
    messages = [make_message(Channel.INAPP, idempotency_key=f"k{n}", address=f"pt-{n}") for n in range(4)]
    results = inapp.send_many(messages=messages)

    assert [(r.outcome, r.error_code) for r in results] == [(Outcome.RETRY, "503")] * 2 + [
        (Outcome.RETRY, NOT_SENT)
    ] * 2
    assert sink.refused == 1 and sink.refused_by_status == {503: 1}
    assert [(c.key, c.status) for c in sink.calls] == [("k0", 503), ("k1", 503)]
    assert not sink.received
