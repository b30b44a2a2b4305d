"""The embedded default end to end: SQLite + in-process broker + a real dramatiq worker + console sink."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import dramatiq
from dramatiq.brokers.stub import StubBroker

from integrations.base import Outcome, SendResult
from integrations.fake import ScriptedProvider
from tests.conftest import attempts, create_notification, create_patient, fake_providers, load
from worker.categories import Channel
from worker.runtime import start_worker, stop_worker
from worker.states import State


def test_care_team_message_flows_through_broker_worker_and_console(make_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sink = tmp_path / "sink.jsonl"
    app = make_app(console_sink=str(sink))
    assert isinstance(app.broker, StubBroker)
    worker = start_worker(app, threads=2)
    try:
        ids = [create_notification(app, create_patient(app)) for _ in range(5)]
        app.broker.join(app.settings.queue_name, timeout=10_000)
        worker.join()
    finally:
        stop_worker(app, worker)
    assert [load(app, i).state for i in ids] == [State.SENT] * 5
    lines = [json.loads(line) for line in sink.read_text().splitlines()]
    assert sorted(line["notification_id"] for line in lines) == ids
    assert {line["body"] for line in lines} == {"You have a new message from your care team."}
    assert all("tok-ios" not in line["to"] for line in lines), "device tokens are masked in the sink"


class _RecordDelays(dramatiq.Middleware):
    """Observes what the real broker is asked to enqueue, and with which delay."""

    def __init__(self) -> None:
        self.delays: list[tuple[str, int]] = []
        self.seen = threading.Event()

    def before_enqueue(self, broker, message, delay):  # type: ignore[no-untyped-def]
        self.delays.append((message.actor_name, delay))
        if delay:
            self.seen.set()


def test_provider_asking_for_later_puts_the_message_on_the_delay_queue(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(
        name="push", channel=Channel.PUSH, script=[SendResult(outcome=Outcome.RETRY, retry_after=120.0)]
    )
    app = make_app(providers=fake_providers(push=push))
    recorder = _RecordDelays()
    app.broker.add_middleware(recorder)
    worker = start_worker(app, threads=1)
    try:
        nid = create_notification(app, create_patient(app), channels=[Channel.PUSH])
        assert recorder.seen.wait(10), "the actor never asked the broker to retry later"
    finally:
        stop_worker(app, worker)
    # First the submit (no delay), then the retry for the provider's 120 s, not the default backoff.
    assert recorder.delays[0][0] == "deliver" and not recorder.delays[0][1]
    assert recorder.delays[1][0] == "deliver" and 120_000 <= recorder.delays[1][1] <= 125_000
    assert load(app, nid).state == State.RETRYING
    assert [a.outcome for a in attempts(app, nid)] == ["retry"]


def test_broker_giving_up_settles_the_row_as_failed(make_app) -> None:  # type: ignore[no-untyped-def]
    class Exploding(ScriptedProvider):
        def send(self, *, message):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    app = make_app(providers=fake_providers(push=Exploding(name="push")), delivery={"max_attempts": 1})
    nid = create_notification(app, create_patient(app), channels=[Channel.PUSH])
    # What dramatiq's Retries middleware sends to on_retry_exhausted when a message keeps crashing:
    app.actors.give_up.fn({"args": [nid]}, {"retries": 4, "max_retries": 4})
    row = load(app, nid)
    assert row.state == State.FAILED and row.reason == "worker errors; broker gave up after 4 retries"
