"""SendGrid bulk sends: one /v3/mail/send request per group of up to 1,000 personalizations, each recipient with her
own unsubscribe headers, link and notification id; SendGrid's real answer shapes mapped to one result each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from integrations.base import NOT_SENT, OutboundMessage, Outcome, supports_bulk
from integrations.sendgrid import (
    INVALID_MESSAGE,
    MAX_PERSONALIZATIONS,
    MAX_REQUESTS_PER_CHUNK,
    UNSUBSCRIBE_TAG,
    SendGridEmailProvider,
)
from tests.integrations.conftest import make_message
from worker.categories import Category, Channel
from worker.clock import FrozenClock
from worker.templates import render

SG = "https://api.sendgrid.com/v3/mail/send"
POSTAL = "Partum Health, 1 Main St, New York, NY"
HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message.personalizations.to"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as c:
        yield c


@pytest.fixture
def sendgrid(client: httpx.Client, clock: FrozenClock) -> SendGridEmailProvider:
    return SendGridEmailProvider(
        client=client,
        clock=clock,
        api_key="SG.key",
        from_email="care@partum.example",
        unsubscribe_group_id=42,
        postal_address=POSTAL,
    )


def marketing(n: int, locale: str = "en", template: str = "class_invite", **kw: Any) -> OutboundMessage:
    """A marketing email rendered the way worker/delivery renders it: her unsubscribe URL inside the body."""
    url = f"https://notify.example/v1/unsubscribe/tok{n}.sig{n}"
    text = render(Category.MARKETING, Channel.EMAIL, locale, unsubscribe_url=url, template=template)
    fields: dict[str, Any] = {
        "notification_id": n,
        "idempotency_key": f"campaign:1:{n}:email",
        "category": "marketing",
        "address": f"patient{n}@example.org",
        "platform": None,
        "title": text.title,
        "body": text.body,
        "data": {"notification_id": str(n), "category": "marketing", "unsubscribe_url": url},
        "promotional": True,
    }
    fields.update(kw)
    return make_message(Channel.EMAIL, **fields)


def survey(n: int) -> OutboundMessage:
    text = render(Category.SURVEY_REMINDER, Channel.EMAIL, "en")
    return make_message(
        Channel.EMAIL,
        notification_id=n,
        idempotency_key=f"survey:{n}:email",
        category="survey_reminder",
        address=f"patient{n}@example.org",
        platform=None,
        title=text.title,
        body=text.body,
        data={"notification_id": str(n), "category": "survey_reminder"},
    )


def accept_all() -> Any:
    """A SendGrid stand-in: 202, empty body, a fresh X-Message-Id per request."""
    counter = iter(range(1, 10_000))

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202, headers={"X-Message-Id": f"sgreq-{next(counter)}"})

    return answer


def bodies(route: respx.Route) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in route.calls]


def sendgrid_error(message: str, field: str | None, help_: str | None = HELP) -> dict[str, Any]:
    return {"errors": [{"message": message, "field": field, "help": help_}]}


def test_sendgrid_is_a_bulk_provider(sendgrid: SendGridEmailProvider, client: httpx.Client) -> None:
    assert supports_bulk(sendgrid)
    assert sendgrid.max_batch == MAX_PERSONALIZATIONS == 1000
    capped = SendGridEmailProvider(client=client, clock=FrozenClock(), api_key="k", from_email="a@b.c", max_batch=5000)
    assert capped.max_batch == 1000


@respx.mock
def test_recipients_sharing_a_text_share_one_request_each_with_her_own_unsubscribe_link(
    sendgrid: SendGridEmailProvider,
) -> None:
    route = respx.post(SG).mock(side_effect=accept_all())
    messages = [marketing(n) for n in (1, 2, 3)]
    results = sendgrid.send_many(messages=messages)

    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3
    assert {r.provider_ref for r in results} == {"sgreq-1"}, "one X-Message-Id per request, stored for each"
    [body] = bodies(route)
    assert route.calls.last.request.headers["authorization"] == "Bearer SG.key"
    # Shared at the top: one subject, one content, one category, the unsubscribe group; nothing of hers.
    assert body["subject"] == messages[0].title
    assert body["categories"] == ["marketing"]
    assert body["asm"] == {"group_id": 42}
    assert "headers" not in body and "custom_args" not in body
    [content] = body["content"]
    assert content["type"] == "text/plain"
    assert UNSUBSCRIBE_TAG in content["value"] and "tok" not in content["value"]
    assert POSTAL in content["value"]
    # Hers alone, per personalization.
    assert len(body["personalizations"]) == 3
    for message, personalization in zip(messages, body["personalizations"], strict=True):
        url = message.data["unsubscribe_url"]
        assert personalization == {
            "to": [{"email": message.address}],
            "custom_args": {"notification_id": str(message.notification_id)},
            "headers": {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
            "substitutions": {UNSUBSCRIBE_TAG: url},
        }
        # What SendGrid renders for her is exactly what the single send would have sent her.
        rendered = content["value"].replace(UNSUBSCRIBE_TAG, personalization["substitutions"][UNSUBSCRIBE_TAG])
        assert rendered == sendgrid.payload(message)["content"][0]["value"]
        assert rendered.count(url) == 1


@respx.mock
def test_mixed_batches_are_split_into_one_request_per_group_and_results_keep_their_order(
    sendgrid: SendGridEmailProvider,
) -> None:
    route = respx.post(SG).mock(side_effect=accept_all())
    messages = [
        marketing(1),
        survey(2),
        marketing(3, locale="es"),
        marketing(4),
        marketing(5, template="news"),
        survey(6),
    ]
    results = sendgrid.send_many(messages=messages)

    sent = bodies(route)
    assert len(sent) == 4, "en class invite, survey reminder, es class invite, en news"
    by_subject = {b["subject"]: b for b in sent}
    assert len(by_subject) == 4
    invite_en = by_subject[messages[0].title]
    assert [p["custom_args"]["notification_id"] for p in invite_en["personalizations"]] == ["1", "4"]
    reminder = by_subject[messages[1].title]
    assert [p["custom_args"]["notification_id"] for p in reminder["personalizations"]] == ["2", "6"]
    # A care message: no unsubscribe headers, no group, no substitution; the text as the single send has it.
    assert "asm" not in reminder
    assert all(set(p) == {"to", "custom_args"} for p in reminder["personalizations"])
    assert reminder["content"][0]["value"] == sendgrid.payload(messages[1])["content"][0]["value"]
    assert reminder["categories"] == ["survey_reminder"]
    # Every result is its own message's request's id, in the order given.
    ref_of = {
        p["custom_args"]["notification_id"]: f"sgreq-{i}" for i, b in enumerate(sent, 1) for p in b["personalizations"]
    }
    assert [r.provider_ref for r in results] == [ref_of[str(m.notification_id)] for m in messages]
    assert all(r.outcome is Outcome.ACCEPTED for r in results)


@respx.mock
def test_more_than_1000_recipients_are_split_at_sendgrids_cap(sendgrid: SendGridEmailProvider) -> None:
    route = respx.post(SG).mock(side_effect=accept_all())
    messages = [marketing(n) for n in range(2500)]
    results = sendgrid.send_many(messages=messages)

    sizes = [len(b["personalizations"]) for b in bodies(route)]
    assert sizes == [1000, 1000, 500]
    ids = [p["custom_args"]["notification_id"] for b in bodies(route) for p in b["personalizations"]]
    assert ids == [str(n) for n in range(2500)], "each recipient exactly once, in order"
    assert [r.provider_ref for r in results] == ["sgreq-1"] * 1000 + ["sgreq-2"] * 1000 + ["sgreq-3"] * 500


@respx.mock
def test_an_address_appears_once_per_request(sendgrid: SendGridEmailProvider) -> None:
    route = respx.post(SG).mock(side_effect=accept_all())
    twice = [marketing(1), marketing(2, address="PATIENT1@example.org"), marketing(3)]
    results = sendgrid.send_many(messages=twice)

    sent = bodies(route)
    assert [[p["custom_args"]["notification_id"] for p in b["personalizations"]] for b in sent] == [["1", "3"], ["2"]]
    assert [r.provider_ref for r in results] == ["sgreq-1", "sgreq-2", "sgreq-1"]


@respx.mock
def test_429_retries_every_recipient_at_x_ratelimit_reset_and_stops_the_call(
    sendgrid: SendGridEmailProvider, clock: FrozenClock
) -> None:
    reset = int(clock.now().timestamp()) + 42
    route = respx.post(SG).respond(
        429,
        json={"errors": [{"field": None, "message": "too many requests"}]},
        headers={"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)},
    )
    messages = [marketing(1), marketing(2), survey(3)]
    results = sendgrid.send_many(messages=messages)

    assert route.call_count == 1, "the second group is not sent into a rate limit"
    assert [r.outcome for r in results] == [Outcome.RETRY] * 3
    assert [r.retry_after for r in results] == [pytest.approx(42.0)] * 3
    assert [r.error_code for r in results] == ["429", "429", NOT_SENT]


@respx.mock
def test_5xx_retries_every_recipient_after_retry_after(sendgrid: SendGridEmailProvider) -> None:
    respx.post(SG).respond(503, text="Service Unavailable", headers={"Retry-After": "7"})
    results = sendgrid.send_many(messages=[marketing(1), marketing(2)])
    assert [(r.outcome, r.error_code, r.retry_after) for r in results] == [(Outcome.RETRY, "503", 7.0)] * 2


@respx.mock
def test_401_is_a_config_error_for_everyone(sendgrid: SendGridEmailProvider) -> None:
    route = respx.post(SG).respond(
        401,
        json={
            "errors": [{"field": None, "message": "The provided authorization grant is invalid, expired, or revoked"}]
        },
    )
    results = sendgrid.send_many(messages=[marketing(1), survey(2)])
    assert route.call_count == 1
    assert [r.outcome for r in results] == [Outcome.CONFIG_ERROR] * 2
    assert [r.error_code for r in results] == ["401", NOT_SENT]


@pytest.mark.parametrize("error", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")], ids=["connect", "read"])
@respx.mock
def test_network_errors_retry_everyone(sendgrid: SendGridEmailProvider, error: Exception) -> None:
    respx.post(SG).mock(side_effect=error)
    results = sendgrid.send_many(messages=[marketing(1), marketing(2)])
    assert [(r.outcome, r.error_code) for r in results] == [(Outcome.RETRY, "network")] * 2


@respx.mock
def test_400_naming_one_personalization_fails_her_and_sends_the_rest_again_at_once(
    sendgrid: SendGridEmailProvider,
) -> None:
    answers = iter(
        [
            httpx.Response(
                400, json=sendgrid_error("Does not contain a valid address.", "personalizations.1.to.0.email")
            ),
            httpx.Response(202, headers={"X-Message-Id": "sgreq-2"}),
        ]
    )
    route = respx.post(SG).mock(side_effect=lambda request: next(answers))
    messages = [marketing(1), marketing(2, address="not-an-address"), marketing(3)]
    results = sendgrid.send_many(messages=messages)

    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.FAILED, Outcome.ACCEPTED]
    assert results[1].error_code == "400"
    assert results[1].detail == "personalizations.1.to.0.email: Does not contain a valid address."
    assert results[0].provider_ref == results[2].provider_ref == "sgreq-2"
    first, second = bodies(route)
    assert len(first["personalizations"]) == 3
    assert [p["to"][0]["email"] for p in second["personalizations"]] == ["patient1@example.org", "patient3@example.org"]


@respx.mock
def test_an_error_text_quoting_an_address_is_stored_without_it(sendgrid: SendGridEmailProvider) -> None:
    answers = iter(
        [
            httpx.Response(
                400,
                json=sendgrid_error(
                    "Each email address in the personalization block should be unique between to, cc, and bcc. We "
                    "found the first duplicate instance of [patient2@example.org] in the personalizations.1.to field.",
                    "personalizations.1",
                ),
            ),
            httpx.Response(202, headers={"X-Message-Id": "sgreq-2"}),
        ]
    )
    respx.post(SG).mock(side_effect=lambda request: next(answers))
    results = sendgrid.send_many(messages=[marketing(1), marketing(2), marketing(3)])
    assert results[1].outcome is Outcome.FAILED
    assert results[1].detail is not None and "patient2" not in results[1].detail and "<address>" in results[1].detail


@respx.mock
def test_400_naming_shared_fields_fails_the_whole_request_without_resending(sendgrid: SendGridEmailProvider) -> None:
    route = respx.post(SG).respond(
        400,
        json={
            "errors": [
                {
                    "message": "The content value must be a string at least one character in length.",
                    "field": "content.0.value",
                    "help": HELP,
                },
                {
                    "message": "Does not contain a valid address.",
                    "field": "personalizations.0.to.0.email",
                    "help": HELP,
                },
            ]
        },
    )
    results = sendgrid.send_many(messages=[marketing(1), marketing(2)])
    assert route.call_count == 1
    assert [r.outcome for r in results] == [Outcome.FAILED, Outcome.FAILED]
    assert results[0].detail is not None and "content.0.value" in results[0].detail


@respx.mock
def test_400_with_an_empty_body_fails_the_request(sendgrid: SendGridEmailProvider) -> None:
    respx.post(SG).respond(400)
    results = sendgrid.send_many(messages=[marketing(1), marketing(2)])
    assert [(r.outcome, r.detail) for r in results] == [(Outcome.FAILED, "request rejected")] * 2


@respx.mock
def test_resending_after_400s_is_bounded(sendgrid: SendGridEmailProvider) -> None:
    route = respx.post(SG).respond(
        400, json=sendgrid_error("Does not contain a valid address.", "personalizations.0.to.0.email")
    )
    results = sendgrid.send_many(messages=[marketing(n) for n in range(5)])
    assert route.call_count == MAX_REQUESTS_PER_CHUNK == 3
    assert [r.outcome for r in results] == [Outcome.FAILED] * 3 + [Outcome.RETRY] * 2
    assert [r.error_code for r in results[3:]] == [NOT_SENT, NOT_SENT]


WHOLE_REQUEST_ROWS = [
    ("202", 202, {"X-Message-Id": "sg-1"}, Outcome.ACCEPTED),
    ("429", 429, {"X-RateLimit-Reset": "1772474445"}, Outcome.RETRY),
    ("500", 500, {}, Outcome.RETRY),
    ("503", 503, {"Retry-After": "5"}, Outcome.RETRY),
    ("413", 413, {}, Outcome.FAILED),
    ("401", 401, {}, Outcome.CONFIG_ERROR),
    ("403", 403, {}, Outcome.CONFIG_ERROR),
]


@pytest.mark.parametrize(
    ("label", "status", "headers", "outcome"), WHOLE_REQUEST_ROWS, ids=[r[0] for r in WHOLE_REQUEST_ROWS]
)
@respx.mock
def test_a_whole_request_answer_maps_every_recipient_as_send_would(
    sendgrid: SendGridEmailProvider, label: str, status: int, headers: dict[str, str], outcome: Outcome
) -> None:
    body = None if status == 202 else {"errors": [{"field": None, "message": "x"}]}
    respx.post(SG).respond(status, json=body, headers=headers)
    one = sendgrid.send(message=marketing(9))
    many = sendgrid.send_many(messages=[marketing(1), marketing(2)])
    assert [r.outcome for r in many] == [outcome, outcome], label
    assert [r.retry_after for r in many] == [one.retry_after] * 2
    assert [r.error_code for r in many] == [one.error_code] * 2


@respx.mock
def test_marketing_without_an_unsubscribe_url_fails_alone(sendgrid: SendGridEmailProvider) -> None:
    route = respx.post(SG).mock(side_effect=accept_all())
    broken = marketing(2, data={"notification_id": "2"})
    results = sendgrid.send_many(messages=[marketing(1), broken, marketing(3)])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.FAILED, Outcome.ACCEPTED]
    assert results[1].error_code == INVALID_MESSAGE
    assert [len(b["personalizations"]) for b in bodies(route)] == [2]


def test_an_empty_call_sends_nothing(sendgrid: SendGridEmailProvider) -> None:
    assert sendgrid.send_many(messages=[]) == []


@respx.mock
def test_bulk_payload_carries_nothing_about_her_but_her_address(sendgrid: SendGridEmailProvider) -> None:
    route = respx.post(SG).mock(side_effect=accept_all())
    phi = {"note": "postpartum preeclampsia", "clinician": "Dr. Okonkwo", "name": "Marisol Quintanilla-Voss"}
    messages = [
        marketing(1, data={"unsubscribe_url": "https://notify.example/v1/unsubscribe/t1", **phi}),
        survey(2),
    ]
    sendgrid.send_many(messages=messages)
    raw = b"".join(call.request.content for call in route.calls).decode()
    for fragment in ("preeclampsia", "Okonkwo", "Marisol", "Quintanilla"):
        assert fragment not in raw
    for body in bodies(route):
        assert set(body) <= {"personalizations", "from", "subject", "content", "categories", "asm"}
        for p in body["personalizations"]:
            assert set(p) <= {"to", "custom_args", "headers", "substitutions"}
            assert [set(t) for t in p["to"]] == [{"email"}], "no name"
            assert set(p["custom_args"]) == {"notification_id"}
