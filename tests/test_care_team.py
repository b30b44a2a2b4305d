"""Care-team escalation and digest below the API: two schedulers racing on PostgreSQL, concurrent reads and folds,
the channel rule, and the ``carenotify care-team`` commands as a real process."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlmodel import col

from tests.conftest import create_patient
from tests.test_cli import _run
from worker.bootstrap import App
from worker.care_team import escalate_due, mark_read
from worker.care_team.channels import next_channel
from worker.categories import Category, Channel
from worker.db import session_scope
from worker.models import Notification, Patient
from worker.models_care_team import CareTeamMessage, Escalation


def _notice(app: App, patient_id: int, message_id: str, **context: Any) -> int:
    return app.submit(
        patient_id=patient_id,
        category=Category.CARE_TEAM_MESSAGE,
        idempotency_key=f"care_team_message:{message_id}",
        context={"message_ref": message_id, **context},
    ).notification_id


def _together(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run the calls at the same moment, each on its own thread; their results in order."""
    start = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


@pytest.mark.postgres
def test_two_schedulers_racing_on_postgres_escalate_each_message_once(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = make_app(database_url=pg_url), make_app(database_url=pg_url)
    heads = [_notice(ours, create_patient(ours, ref=f"pt-{i}"), f"m-{i}") for i in range(60)]
    ours.clock.advance(hours=4)
    queued: list[list[int]] = [[], []]
    settings = ours.settings.care_team.model_copy(update={"escalation_batch_size": 4})
    scans = _together(
        [
            partial(escalate_due, app.engine, app.clock, queued[i].extend, settings)
            for i, app in enumerate((ours, theirs))
        ]
    )
    assert sum(scan.escalated for scan in scans) == 60 and all(scan.escalated for scan in scans), scans
    assert len(set(queued[0]) | set(queued[1])) == 60 and not set(queued[0]) & set(queued[1])
    with session_scope(ours.engine) as session:
        follow_ups = session.scalars(
            select(func.count()).where(col(Notification.idempotency_key).like("care_team_escalation:%"))
        ).one()
        records = session.scalars(select(CareTeamMessage).order_by(col(CareTeamMessage.notification_id))).all()
    assert follow_ups == 60
    assert [r.notification_id for r in records] == heads
    assert {r.escalation for r in records} == {Escalation.ESCALATED}
    # A third scan, any time later, finds nothing: never twice.
    ours.clock.advance(hours=10)
    assert escalate_due(theirs.engine, theirs.clock, queued[1].extend, settings).escalated == 0


@pytest.mark.postgres
def test_a_read_racing_a_burst_on_postgres_leaves_no_message_folded_into_a_read_notice(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """Whichever commits first, a notice folds only into a head still unread when the fold commits."""
    app = make_app(database_url=pg_url)
    for round_ in range(10):
        pid = create_patient(app, ref=f"pt-{round_}")
        head = _notice(app, pid, f"head-{round_}")
        _together(
            [
                partial(mark_read, app.engine, app.clock, idempotency_key=f"care_team_message:head-{round_}"),
                partial(_notice, app, pid, f"later-{round_}"),
            ]
        )
        with session_scope(app.engine) as session:
            later = session.scalars(
                select(Notification).where(col(Notification.idempotency_key) == f"care_team_message:later-{round_}")
            ).one()
            record = session.get(CareTeamMessage, later.id)
            head_record = session.get(CareTeamMessage, head)
            assert record is not None and head_record is not None and head_record.read_at is not None
            if later.state == "folded":
                assert record.digest_of == head and record.created_at <= head_record.read_at
            else:
                assert record.digest_of is None and later.state == "pending"


def test_the_follow_up_channel_rule(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    pid = create_patient(app, ref="pt-1", email=None)
    with session_scope(app.engine) as session:
        patient = session.get(Patient, pid)
        assert patient is not None
        stop = {("sms", None): False}  # she replied STOP: no texts at all
        first = next_channel(patient=patient, devices=[], preferences=[], consent={}, reached=set())
        assert first.channel is Channel.SMS and first.passed_over == ()
        choice = next_channel(patient=patient, devices=[], preferences=[], consent=stop, reached={Channel.PUSH})
    assert choice.channel is None
    assert choice.passed_over == (
        "sms: no consent",
        "email: no email address",
        "push: the notice already reached her there",
    )


def test_care_team_read_and_escalate_commands(tmp_path: Path, make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(database_url=f"sqlite:///{tmp_path / 'cli.db'}")
    _notice(app, create_patient(app, ref="pt-1"), "m-1")
    unknown = _run(["care-team", "read", "nope"], tmp_path)
    assert unknown.returncode == 1 and "no care-team message notice has message_id nope" in unknown.stderr
    read = _run(["care-team", "read", "m-1"], tmp_path)
    assert read.returncode == 0, read.stderr
    receipt = json.loads(read.stdout)
    assert receipt["first"] is True and receipt["escalation"] == "cancelled"
    escalate = _run(["care-team", "escalate"], tmp_path)
    assert escalate.returncode == 0 and json.loads(escalate.stdout) == {"escalated": 0}, escalate.stderr


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_erasure_takes_the_care_team_records_with_the_notifications(make_app, request, backend: str) -> None:  # type: ignore[no-untyped-def]
    from worker.erasure import erase_patient

    extra = {"database_url": request.getfixturevalue("pg_url")} if backend == "postgres" else {}
    app = make_app(**extra)
    pid, other = create_patient(app, ref="pt-1"), create_patient(app, ref="pt-2")
    _notice(app, pid, "m-1")
    _notice(app, pid, "m-2")  # folded into m-1
    kept = _notice(app, other, "m-3")
    erase_patient(app.engine, app.clock, patient_id=pid, reason="under_13")
    with session_scope(app.engine) as session:
        assert [r.notification_id for r in session.scalars(select(CareTeamMessage))] == [kept]


@pytest.mark.postgres
def test_the_digest_statement_stays_on_indexes_with_a_plan_cached_while_the_table_was_empty(pg_url: str) -> None:
    """A connection prepares the submit statement early (psycopg does on its fifth run) and may keep a generic plan
    made when ``care_team_message`` was empty: that plan must still read a few pages, not the whole table."""
    import re
    from datetime import UTC, datetime, timedelta

    import psycopg
    from psycopg.types.json import Json
    from sqlalchemy.engine import make_url

    from worker.outbox import digest

    rule = digest.DigestRule(timedelta(minutes=10), timedelta(hours=4), timedelta(minutes=30))
    names: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    sql = re.sub(r"%\((\w+)\)s", numbered, digest.SUBMIT_PG)
    now = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)

    def args(i: int) -> list[Any]:
        values = {
            "patient_id": 1,
            "category": "care_team_message",
            "channels": None,
            "context": Json({"message_ref": f"m-{i}"}),
            "idempotency_key": f"care_team_message:m-{i}",
            "not_before": None,
            "expires_at": None,
            "now": now,
            **digest.pg_params(rule, now, {}),
        }
        return [values[name] for name in names]

    url = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO patient (external_ref, time_zone, locale, created_at, updated_at) "
                     "VALUES ('pt-1', 'UTC', 'en', now(), now())")  # fmt: skip
        conn.execute("SET plan_cache_mode = force_generic_plan")
        types = {"patient_id": "int", "channels": "json", "context": "json", "urgent": "bool", "category": "text"}
        types |= {"idempotency_key": "text", "fold_text": "text"}
        typed = ", ".join(types.get(name, "timestamptz") for name in names)
        conn.execute(f"PREPARE submit_digest ({typed}) AS {sql}")
        placeholders = ", ".join("%s" for _ in names)
        client = psycopg.ClientCursor(conn)  # EXECUTE's arguments as literals, typed by the prepared statement
        client.execute(f"EXECUTE submit_digest ({placeholders})", args(0))  # planned now, on an empty table
        conn.execute(
            "INSERT INTO notification (id, patient_id, category, context, idempotency_key, state, attempt_count, "
            "created_at, updated_at) SELECT g, 1, 'care_team_message', '{}', 'bulk-' || g, 'sent', 0, now(), now() "
            "FROM generate_series(1000, 4999) g"
        )
        conn.execute(
            "INSERT INTO care_team_message (notification_id, patient_id, created_at, urgent, read_at) "
            "SELECT g, 1, %s - interval '1 hour', false, NULL FROM generate_series(1000, 4999) g",
            [now],
        )
        plan = client.execute(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE submit_digest ({placeholders})", args(1)
        ).fetchone()
    assert plan is not None
    pages = plan[0][0]["Plan"]["Shared Hit Blocks"] + plan[0][0]["Plan"]["Shared Read Blocks"]
    assert pages < 100, f"{pages} pages for one submit"  # a join driven by a scan of the table took 16,000
    assert '"Node Type": "Seq Scan"' not in json.dumps(plan[0]), "the cached plan scans a table"
