"""Dead letters on the real Redis broker and the in-process one: listed and replayed by the operator."""

from __future__ import annotations

import time

import dramatiq
import pytest

from integrations.fake import ScriptedProvider
from tests.conftest import REDIS_URL, create_patient, fake_providers, load
from worker.categories import Channel
from worker.dead_letters import list_dead_letters, replay_dead_letter
from worker.delivery import deliver
from worker.states import State


class Exploding(ScriptedProvider):
    def send(self, *, message):  # type: ignore[no-untyped-def]
        raise RuntimeError("bug")


def _dead_letter_one(app) -> int:  # type: ignore[no-untyped-def]
    """Crash a delivery until the broker gives up: the message lands in the dead-letter queue."""
    from worker.outbox import submit

    pid = create_patient(app)
    nid = submit(
        app.engine,
        app.clock,
        lambda _: None,
        patient_id=pid,
        category="care_team_message",
        idempotency_key="dl",
        channels=[Channel.PUSH],
    ).notification_id
    # As if it had already been retried to the cap: the next crash dead-letters it.
    message = app.actors.deliver.message(nid).copy(options={"retries": 99})
    app.broker.enqueue(message)
    worker = dramatiq.Worker(app.broker, worker_threads=1)
    worker.start()
    try:
        deadline = time.monotonic() + 15
        while not list_dead_letters(app.broker, app.settings.queue_name) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
    return nid


def _check_replay(app, nid: int) -> None:  # type: ignore[no-untyped-def]
    [letter] = list_dead_letters(app.broker, app.settings.queue_name)
    assert letter.notification_id == nid and letter.actor_name == "deliver"
    app.actors.give_up.fn({"args": [nid]}, {"retries": 99})
    assert load(app, nid).state == State.FAILED
    app.deps.providers = fake_providers()  # the bug is fixed
    queued: list[int] = []
    replayed = replay_dead_letter(
        app.broker,
        app.engine,
        app.clock,
        queued.append,
        queue_name=app.settings.queue_name,
        message_id=letter.message_id,
    )
    assert replayed == letter and queued == [nid]
    assert list_dead_letters(app.broker, app.settings.queue_name) == []
    row = load(app, nid)
    assert row.state == State.PENDING and row.reason.startswith("replayed from dead letters")
    assert deliver(app.deps, nid).state is State.SENT
    assert (
        replay_dead_letter(app.broker, app.engine, app.clock, queued.append, queue_name="deliveries", message_id="x")
        is None
    )


def test_dead_letters_in_memory_broker(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers(push=Exploding(name="push")))
    _check_replay(app, _dead_letter_one(app))


@pytest.mark.postgres
@pytest.mark.redis
def test_dead_letters_on_redis(make_app, pg_url: str, redis_namespace: str) -> None:  # type: ignore[no-untyped-def]
    app = make_app(
        providers=fake_providers(push=Exploding(name="push")),
        database_url=pg_url,
        broker="redis",
        redis_url=REDIS_URL,
        broker_namespace=redis_namespace,
        migrate=False,
    )
    _check_replay(app, _dead_letter_one(app))
