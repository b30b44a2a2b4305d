"""The in-app batch endpoint we offer the platform: per-message statuses (409 = already accepted), whole-request
refusals, chunking at max_batch, and the fall-back to single posts while the platform has no batch endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx

from integrations.base import NOT_SENT, OutboundMessage, Outcome, supports_bulk
from integrations.inapp import BATCH_RECHECK_SECONDS, DEFAULT_MAX_BATCH, InAppProvider, batch_url_for
from tests.integrations.conftest import make_message
from worker.categories import Channel
from worker.clock import FrozenClock

INAPP = "https://secure-messaging.example/api/notices"
BATCH = "https://secure-messaging.example/api/notices/batch"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as c:
        yield c


@pytest.fixture
def inapp(client: httpx.Client, clock: FrozenClock) -> InAppProvider:
    return InAppProvider(client=client, clock=clock, url=INAPP, token="bearer-x")


def notice(n: int, **kw: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "notification_id": n,
        "idempotency_key": f"care:{n}:inapp",
        "address": f"pt-ref-{n}",
        "platform": None,
    }
    fields.update(kw)
    return make_message(Channel.INAPP, **fields)


def accept_batches() -> Any:
    """The platform taking every message of every batch: 200 with a 201 result per message."""

    def answer(request: httpx.Request) -> httpx.Response:
        items = json.loads(request.content)["messages"]
        return httpx.Response(
            200,
            json={
                "results": [
                    {"idempotency_key": m["idempotency_key"], "status": 201, "id": f"m-{m['idempotency_key']}"}
                    for m in items
                ]
            },
        )

    return answer


def test_inapp_is_a_bulk_provider(inapp: InAppProvider) -> None:
    assert supports_bulk(inapp)
    assert inapp.max_batch == DEFAULT_MAX_BATCH == 500


@pytest.mark.parametrize(
    ("url", "batch"),
    [
        (INAPP, BATCH),
        (INAPP + "/", BATCH),
        ("http://127.0.0.1:8123/notices", "http://127.0.0.1:8123/notices/batch"),
        ("https://msg.example/v1/notices?tenant=partum", "https://msg.example/v1/notices/batch?tenant=partum"),
    ],
)
def test_the_batch_endpoint_sits_under_the_single_url(url: str, batch: str) -> None:
    assert batch_url_for(url) == batch


@respx.mock
def test_one_batch_request_with_the_single_fields_and_bearer_auth(inapp: InAppProvider) -> None:
    route = respx.post(BATCH).mock(side_effect=accept_batches())
    messages = [notice(1), notice(2)]
    results = inapp.send_many(messages=messages)

    assert route.call_count == 1
    request = route.calls.last.request
    assert request.headers["authorization"] == "Bearer bearer-x"
    assert json.loads(request.content) == {
        "messages": [
            {
                "patient_ref": f"pt-ref-{n}",
                "category": "care_team_message",
                "text": "You have a new message from your care team.",
                "idempotency_key": f"care:{n}:inapp",
            }
            for n in (1, 2)
        ]
    }
    assert [(r.outcome, r.provider_ref) for r in results] == [
        (Outcome.ACCEPTED, "m-care:1:inapp"),
        (Outcome.ACCEPTED, "m-care:2:inapp"),
    ]


@respx.mock
def test_every_per_message_status_maps_to_one_outcome(inapp: InAppProvider) -> None:
    statuses: dict[int, tuple[dict[str, Any], Outcome, str | None]] = {
        1: ({"status": 201, "id": "m1"}, Outcome.ACCEPTED, None),
        2: ({"status": 409, "id": "m-original"}, Outcome.ACCEPTED, None),
        3: ({"status": 400, "error": "unknown_patient"}, Outcome.FAILED, "400"),
        4: ({"status": 404, "error": "patient_erased"}, Outcome.FAILED, "404"),
        5: ({"status": 429, "retry_after": 12}, Outcome.RETRY, "429"),
        6: ({"status": 503}, Outcome.RETRY, "503"),
        7: ({"status": 403, "error": "scope"}, Outcome.CONFIG_ERROR, "403"),
        8: ({"status": 200, "id": 88}, Outcome.ACCEPTED, None),
    }
    # Results in another order than sent, matched by key; message 9 left out of the answer.
    results_json = [
        {"idempotency_key": f"care:{n}:inapp", **item} for n, (item, _, _) in reversed(list(statuses.items()))
    ]
    respx.post(BATCH).respond(200, json={"results": results_json}, headers={"Retry-After": "3"})
    results = inapp.send_many(messages=[notice(n) for n in range(1, 10)])

    for n, (_, outcome, code) in statuses.items():
        assert (results[n - 1].outcome, results[n - 1].error_code) == (outcome, code), n
    assert results[1].provider_ref == "m-original", "a duplicate is the message already accepted"
    assert results[2].detail == "unknown_patient"
    assert results[4].retry_after == 12.0, "the item's own wait"
    assert results[5].retry_after == 3.0, "else the answer's Retry-After"
    assert results[7].provider_ref == "88"
    assert (results[8].outcome, results[8].error_code) == (Outcome.RETRY, "bad_answer"), "the key makes it safe"


WHOLE_ROWS = [
    ("429", 429, Outcome.RETRY),
    ("500", 500, Outcome.RETRY),
    ("503", 503, Outcome.RETRY),
    ("401", 401, Outcome.CONFIG_ERROR),
    ("403", 403, Outcome.CONFIG_ERROR),
    ("400", 400, Outcome.FAILED),
    ("413", 413, Outcome.FAILED),
]


@pytest.mark.parametrize(("label", "status", "outcome"), WHOLE_ROWS, ids=[r[0] for r in WHOLE_ROWS])
@respx.mock
def test_a_whole_request_answer_maps_every_message(
    inapp: InAppProvider, label: str, status: int, outcome: Outcome
) -> None:
    respx.post(BATCH).respond(status, json={"error": "x"}, headers={"Retry-After": "9"})
    results = inapp.send_many(messages=[notice(1), notice(2)])
    assert [(r.outcome, r.error_code) for r in results] == [(outcome, str(status))] * 2, label
    if outcome is Outcome.RETRY:
        assert [r.retry_after for r in results] == [9.0, 9.0]


@pytest.mark.parametrize("error", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")], ids=["connect", "read"])
@respx.mock
def test_network_errors_retry_everyone(inapp: InAppProvider, error: Exception) -> None:
    respx.post(BATCH).mock(side_effect=error)
    results = inapp.send_many(messages=[notice(1), notice(2)])
    assert [(r.outcome, r.error_code) for r in results] == [(Outcome.RETRY, "network")] * 2


@respx.mock
def test_a_2xx_without_readable_results_is_retried(inapp: InAppProvider) -> None:
    respx.post(BATCH).respond(200, text="<html>ok</html>")
    results = inapp.send_many(messages=[notice(1), notice(2)])
    assert [(r.outcome, r.error_code) for r in results] == [(Outcome.RETRY, "bad_answer")] * 2


@respx.mock
def test_batches_are_cut_at_max_batch_and_a_refusal_stops_the_call(client: httpx.Client, clock: FrozenClock) -> None:
    inapp = InAppProvider(client=client, clock=clock, url=INAPP, token="t", max_batch=2)
    accept = accept_batches()
    answers = iter([accept, lambda request: httpx.Response(503, headers={"Retry-After": "4"}), accept])
    route = respx.post(BATCH).mock(side_effect=lambda request: next(answers)(request))
    results = inapp.send_many(messages=[notice(n) for n in range(1, 6)])

    assert route.call_count == 2, "the third batch is not sent after a 503"
    assert [len(json.loads(c.request.content)["messages"]) for c in route.calls] == [2, 2]
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 2 + [Outcome.RETRY] * 3
    assert [r.error_code for r in results[2:]] == ["503", "503", NOT_SENT]
    assert [r.retry_after for r in results[2:]] == [4.0] * 3


@respx.mock
def test_a_key_given_twice_is_sent_once(inapp: InAppProvider) -> None:
    route = respx.post(BATCH).mock(side_effect=accept_batches())
    results = inapp.send_many(messages=[notice(1), notice(2), notice(1, notification_id=99)])
    [call] = route.calls
    assert [m["idempotency_key"] for m in json.loads(call.request.content)["messages"]] == [
        "care:1:inapp",
        "care:2:inapp",
    ]
    assert results[2] == results[0]


@respx.mock
def test_without_a_batch_endpoint_it_sends_one_by_one_and_asks_again_later(
    inapp: InAppProvider, clock: FrozenClock
) -> None:
    batch = respx.post(BATCH).respond(404, json={"error": "not found"})
    single = respx.post(INAPP).mock(
        side_effect=lambda request: httpx.Response(201, json={"id": json.loads(request.content)["idempotency_key"]})
    )
    results = inapp.send_many(messages=[notice(1), notice(2)])
    assert (batch.call_count, single.call_count) == (1, 2)
    assert [(r.outcome, r.provider_ref) for r in results] == [
        (Outcome.ACCEPTED, "care:1:inapp"),
        (Outcome.ACCEPTED, "care:2:inapp"),
    ]

    inapp.send_many(messages=[notice(3)])
    assert (batch.call_count, single.call_count) == (1, 3), "no batch attempt while it is known missing"

    clock.advance(timedelta(seconds=BATCH_RECHECK_SECONDS + 1))
    inapp.send_many(messages=[notice(4)])
    assert batch.call_count == 2, "asked again after the recheck interval"


@respx.mock
def test_one_by_one_also_stops_at_a_refusal(inapp: InAppProvider) -> None:
    respx.post(BATCH).respond(405)
    single = respx.post(INAPP).respond(429, headers={"Retry-After": "2"})
    results = inapp.send_many(messages=[notice(1), notice(2), notice(3)])
    assert single.call_count == 1
    assert [(r.outcome, r.error_code, r.retry_after) for r in results] == [
        (Outcome.RETRY, "429", 2.0),
        (Outcome.RETRY, NOT_SENT, 2.0),
        (Outcome.RETRY, NOT_SENT, 2.0),
    ]


@respx.mock
def test_the_single_endpoint_also_reads_409_as_already_accepted(inapp: InAppProvider) -> None:
    respx.post(INAPP).respond(409, json={"error": "duplicate", "id": "m-original"})
    result = inapp.send(message=notice(1))
    assert (result.outcome, result.provider_ref) == (Outcome.ACCEPTED, "m-original")


def test_an_empty_call_sends_nothing(inapp: InAppProvider) -> None:
    assert inapp.send_many(messages=[]) == []


@respx.mock
def test_batch_items_carry_only_the_four_fields(inapp: InAppProvider) -> None:
    route = respx.post(BATCH).mock(side_effect=accept_batches())
    phi = {"note": "your lactation consultant reviewed the mastitis photos", "rx": "sertraline 50mg"}
    inapp.send_many(messages=[notice(1, data={"notification_id": "1", **phi})])
    raw = route.calls.last.request.content.decode()
    assert "mastitis" not in raw and "sertraline" not in raw
    [item] = json.loads(raw)["messages"]
    assert set(item) == {"patient_ref", "category", "text", "idempotency_key"}
