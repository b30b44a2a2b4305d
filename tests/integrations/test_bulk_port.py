"""The bulk port: which providers offer it, and the scripted fake the delivery tests can use."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from integrations.base import NOT_SENT, OutboundMessage, Outcome, SendResult, complete, not_sent, supports_bulk
from integrations.fake import ScriptedBulkProvider, ScriptedProvider
from integrations.twilio import TwilioSmsProvider
from tests.integrations.conftest import make_message
from worker.categories import Channel
from worker.clock import FrozenClock


class _NoBatchSize:
    name = "x"
    channel = Channel.EMAIL

    def send(self, *, message: OutboundMessage) -> SendResult:
        return SendResult(outcome=Outcome.ACCEPTED)

    def send_many(self, *, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        return []


def test_supports_bulk_needs_send_many_and_a_positive_max_batch() -> None:
    assert supports_bulk(ScriptedBulkProvider())
    assert not supports_bulk(ScriptedProvider())
    with httpx.Client() as client:
        twilio = TwilioSmsProvider(
            client=client, clock=FrozenClock(), account_sid="AC1", auth_token="t", from_number="+15005550006"
        )
        assert not supports_bulk(twilio)
    assert not supports_bulk(_NoBatchSize())
    assert not supports_bulk(ScriptedBulkProvider(max_batch=0))
    odd = _NoBatchSize()
    odd.max_batch = True  # type: ignore[attr-defined]
    assert not supports_bulk(odd)


def test_scripted_bulk_provider_answers_each_message_from_the_script_and_records_batches() -> None:
    fake = ScriptedBulkProvider(
        script=[SendResult(outcome=Outcome.ACCEPTED), SendResult(outcome=Outcome.FAILED, error_code="400")],
        refuse_batches=[SendResult(outcome=Outcome.RETRY, error_code="429", retry_after=3.0)],
    )
    messages = [make_message(Channel.EMAIL, notification_id=n) for n in range(3)]
    refused = fake.send_many(messages=messages)
    assert [r.error_code for r in refused] == ["429"] * 3
    results = fake.send_many(messages=messages)
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.FAILED, Outcome.ACCEPTED]
    assert [len(b) for b in fake.batches] == [3, 3]
    assert len(fake.sent) == 6


def test_not_sent_keeps_the_refusals_outcome_and_wait() -> None:
    refusal = SendResult(outcome=Outcome.RETRY, error_code="429", retry_after=12.0)
    result = not_sent(refusal)
    assert (result.outcome, result.error_code, result.retry_after) == (Outcome.RETRY, NOT_SENT, 12.0)
    assert complete([refusal, result]) == [refusal, result]
