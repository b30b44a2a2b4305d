"""The hot path on PostgreSQL: one statement per step, run in autocommit (no BEGIN, no COMMIT, no ORM).

- :func:`claim_and_read`: claims the row (the same rules as :func:`worker.delivery.claims.claim`), writes the
  claim's event, and reads every send-time fact the decision needs, in one round trip.
- :func:`settle`: settles a row this worker still holds and writes the transition's event, in one round trip.

Each is a single statement, so it is atomic without a transaction block. The facts come back raw; the same
pure functions as on the portable path turn them into the decision's inputs (:mod:`worker.consent`,
:mod:`worker.caps`, the ``stale_for`` checks), so the two paths cannot disagree on a rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.orm import configure_mappers
from sqlalchemy.orm.instrumentation import manager_of_class
from sqlmodel import SQLModel

from worker import appointments, campaigns, care_pause, surveys
from worker.caps import CAPPED_HEALTH_TEXTS, Counts, counts_from
from worker.categories import Category
from worker.consent import consent_from
from worker.db import pyformat, run_raw
from worker.models import Device, Notification, Patient, Preference
from worker.states import CLAIMABLE, TERMINAL, State

M = TypeVar("M", bound=SQLModel)
_CAPPED = tuple(c.value for c in (Category.MARKETING, *CAPPED_HEALTH_TEXTS))
_NOTIFICATION_COLUMNS = (
    "id, patient_id, category, channels, context, idempotency_key, state, reason, not_before, expires_at, "
    "attempt_count, enqueued_at, lease_until, claimed_by, created_at, updated_at, finished_at, campaign_id"
)
_NOTIFICATION_FIELDS = tuple(_NOTIFICATION_COLUMNS.split(", "))


def _claim_and_read(rows: str) -> str:
    """The claim-and-read statement for the rows ``rows`` (a condition on ``notification``) picks: one text for a
    batch and for a single row, so a fact added here is read by both."""
    return pyformat(
        f"""
WITH observed AS (
    SELECT id, state, not_before FROM notification WHERE {rows} ORDER BY id FOR UPDATE
), claimed AS (
    UPDATE notification n
       SET state = 'sending', lease_until = :lease_until, claimed_by = :holder,
           attempt_count = n.attempt_count + 1, updated_at = :now
      FROM observed o
     WHERE n.id = o.id
       AND ((n.state IN ('pending', 'deferred', 'retrying') AND (n.not_before IS NULL OR n.not_before <= :now))
            OR (n.state = 'sending' AND n.lease_until < :now))
 RETURNING {", ".join(f"n.{c}" for c in _NOTIFICATION_COLUMNS.split(", "))}, o.state AS observed_state
), claim_event AS (
    INSERT INTO notification_event (notification_id, from_state, to_state, reason, at)
    SELECT id, observed_state, 'sending',
           CASE WHEN observed_state = 'sending' THEN 'lease expired; claimed again' ELSE 'claimed' END, :now
      FROM claimed
)
SELECT o.id AS observed_id, o.state AS observed_state, o.not_before AS observed_not_before,
       c.id, c.patient_id, c.category, c.channels, c.context, c.idempotency_key, c.state, c.reason, c.not_before,
       c.expires_at, c.attempt_count, c.enqueued_at, c.lease_until, c.claimed_by, c.created_at, c.updated_at,
       c.finished_at, c.campaign_id,
       p.id AS p_id, p.external_ref, p.time_zone, p.locale, p.email, p.phone_e164, p.us_state,
       p.created_at AS p_created_at, p.updated_at AS p_updated_at,
       (SELECT json_agg(json_build_object('id', d.id, 'platform', d.platform, 'token', d.token, 'live', d.live,
                                          'created_at', d.created_at, 'last_seen_at', d.last_seen_at) ORDER BY d.id)
          FROM device d WHERE d.patient_id = c.patient_id) AS devices,
       (SELECT json_agg(json_build_object('id', f.id, 'category', f.category, 'channel', f.channel,
                                          'enabled', f.enabled, 'updated_at', f.updated_at))
          FROM preference f WHERE f.patient_id = c.patient_id) AS preferences,
       (SELECT array_agg(a.target) FROM delivery_attempt a
         WHERE a.notification_id = c.id AND a.outcome = 'accepted') AS accepted_before,
       (SELECT json_agg(json_build_array(e.channel, e.category, e.granted) ORDER BY e.id)
          FROM consent_event e WHERE e.patient_id = c.patient_id) AS consent,
       CASE WHEN c.category IN {_CAPPED} THEN
           (SELECT json_agg(json_build_array(x.id, x.category, a.channel, a.started_at))
              FROM notification x JOIN delivery_attempt a ON a.notification_id = x.id
             WHERE x.patient_id = c.patient_id AND x.category IN {_CAPPED} AND x.id <> c.id
               AND a.outcome = 'accepted' AND a.started_at > :week_ago)
       END AS capped_sends,
       ap.status AS appointment_status, ap.version AS appointment_version, ap.starts_at AS appointment_starts_at,
       sv.id IS NOT NULL AS survey_found, sv.completed_at AS survey_completed_at,
       cp.state AS campaign_state, sv.on_care_pause AS survey_on_care_pause,
       pz.paused AS pause_paused, pz.reason_code AS pause_reason_code, pz.until AS pause_until,
       pz.hold_appointment_reminders AS pause_holds_appointments, pz.at AS pause_at
  FROM observed o
  LEFT JOIN claimed c ON c.id = o.id
  LEFT JOIN patient p ON p.id = c.patient_id
  LEFT JOIN appointment ap ON json_typeof(c.context -> 'appointment_id') = 'number'
                          AND ap.id = (c.context ->> 'appointment_id')::bigint
  LEFT JOIN survey_assignment sv ON json_typeof(c.context -> 'survey_assignment_id') = 'number'
                                AND sv.id = (c.context ->> 'survey_assignment_id')::bigint
  LEFT JOIN campaign cp ON cp.id = c.campaign_id
  LEFT JOIN LATERAL (SELECT z.paused, z.reason_code, z.until, z.hold_appointment_reminders, z.at
                       FROM care_pause_event z WHERE z.patient_id = c.patient_id ORDER BY z.id DESC LIMIT 1) pz ON true
 ORDER BY o.id
"""
    )


#: A batch's claim. Planned at every run (the array's length is unknown to a generic plan), which 50 rows amortise.
CLAIM_AND_READ = _claim_and_read("id = ANY(CAST(:ids AS bigint[]))")
#: One row's claim: a fixed shape, so PostgreSQL plans it once per connection and reuses the plan (a generic plan),
#: instead of planning it again at every run as it does the array form (planning costs more than running it).
CLAIM_AND_READ_ONE = _claim_and_read("id = :id")


def _settle(rows: str, *, answer: str = "") -> str:
    """The settle statement for the settlements ``rows`` (a query of id, state, reason, not_before, uncount),
    optionally with a provider answer written by the same statement (``answer``: a data-modifying CTE). One
    text for every form, so a rule changed here holds for all."""
    return pyformat(
        f"""
WITH s AS (
    {rows}
),{answer} settled AS (
    UPDATE notification n
       SET state = s.state, reason = s.reason, updated_at = :now,
           finished_at = CASE WHEN s.state IN {tuple(str(t) for t in TERMINAL)} THEN :now ELSE n.finished_at END,
           lease_until = NULL, claimed_by = NULL,
           not_before = CASE WHEN s.state IN ('retrying', 'deferred') THEN s.not_before ELSE n.not_before END,
           -- A retry's broker message becomes visible at not_before; a deferral has none (the relay queues it).
           enqueued_at = CASE WHEN s.state = 'retrying' THEN s.not_before
                              WHEN s.state = 'deferred' THEN NULL ELSE n.enqueued_at END,
           attempt_count = GREATEST(0, n.attempt_count - s.uncount)
      FROM s
     WHERE n.id = s.id AND n.state = 'sending' AND n.claimed_by = :holder
 RETURNING n.id, s.state, s.reason
)
INSERT INTO notification_event (notification_id, from_state, to_state, reason, at)
SELECT id, 'sending', state, reason, :now FROM settled
RETURNING notification_id
"""
    )


_ATTEMPT_COLUMNS = (
    "notification_id",
    "channel",
    "provider",
    "target",
    "device_id",
    "outcome",
    "provider_ref",
    "error_code",
    "detail",
    "started_at",
    "duration_ms",
)
_ATTEMPT_TYPES = ("bigint", "text", "text", "text", "int", "text", "text", "text", "text", "timestamptz", "int")

#: Many rows' settlements (a batch), as arrays.
SETTLE = _settle(
    """SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:states AS text[]), CAST(:reasons AS text[]),
                         CAST(:not_befores AS timestamptz[]), CAST(:uncounts AS int[]))
           AS t(id, state, reason, not_before, uncount)"""
)
_ONE = (
    "SELECT CAST(:id AS bigint) AS id, CAST(:state AS text) AS state, CAST(:reason AS text) AS reason, "
    "CAST(:not_before AS timestamptz) AS not_before, CAST(:uncount AS int) AS uncount"
)
#: One row's settlement, as plain values (no arrays to build and take apart).
SETTLE_ONE = _settle(_ONE)
#: One row's last provider answer and its settlement in one statement: the answer is written whether or not the
#: row is still held (it is what the provider knows), and together with the settle, so a delivery costs one round
#: trip and one commit less than writing them apart, with no wider crash window: the answer was already known.
RECORD_AND_SETTLE_ONE = _settle(
    _ONE,
    answer=f"""
answer AS (
    INSERT INTO delivery_attempt ({", ".join(_ATTEMPT_COLUMNS)})
    VALUES ({", ".join(f"CAST(:a_{c} AS {t})" for c, t in zip(_ATTEMPT_COLUMNS, _ATTEMPT_TYPES, strict=True))})
),""",
)


RECORD = pyformat(
    """
INSERT INTO delivery_attempt (notification_id, channel, provider, target, device_id, outcome, provider_ref,
                              error_code, detail, started_at, duration_ms)
SELECT * FROM unnest(CAST(:notification_id AS bigint[]), CAST(:channel AS text[]), CAST(:provider AS text[]),
                     CAST(:target AS text[]), CAST(:device_id AS int[]), CAST(:outcome AS text[]),
                     CAST(:provider_ref AS text[]), CAST(:error_code AS text[]), CAST(:detail AS text[]),
                     CAST(:started_at AS timestamptz[]), CAST(:duration_ms AS int[]))
"""
)


def record(engine: Engine, attempts: Sequence[Mapping[str, Any]]) -> None:
    """Write provider answers (``delivery_attempt`` rows as column -> value) in one statement."""
    if attempts:
        run_raw(engine, RECORD, {column: [a[column] for a in attempts] for column in attempts[0]})


@dataclass(frozen=True)
class Claimed:
    """A claimed row and everything read with it, raw; :mod:`worker.delivery.send` turns it into facts."""

    row: Notification
    patient: Patient | None
    devices: list[Device]
    preferences: list[Preference]
    accepted_before: set[str]
    consent: dict[tuple[str, str | None], bool]
    capped_sends: list[tuple[int, int, str, str, datetime]]
    stale: tuple[str, str] | None
    pause: care_pause.Pause | None = None
    survey_on_pause: str | None = None


def claim_and_read(
    engine: Engine, notification_ids: Sequence[int], *, now: datetime, lease: timedelta, holder: str
) -> tuple[list[Claimed], dict[int, datetime]]:
    """Claim and read in one statement: the rows claimed, and the open rows not due yet (id -> when they are)."""
    ids = sorted(set(notification_ids))
    params: dict[str, Any] = {
        "now": now,
        "lease_until": now + lease,
        "holder": holder,
        "week_ago": now - timedelta(days=7),
    }
    if len(ids) == 1:
        records = run_raw(engine, CLAIM_AND_READ_ONE, {"id": ids[0], **params})
    else:
        records = run_raw(engine, CLAIM_AND_READ, {"ids": ids, **params})
    claimed: list[Claimed] = []
    later: dict[int, datetime] = {}
    for record in records:
        if record["id"] is not None:
            claimed.append(_claimed(record, now))
        elif State(record["observed_state"]) in CLAIMABLE and record["observed_not_before"] is not None:
            later[int(record["observed_id"])] = record["observed_not_before"]
    return claimed, later


def _parse_instant(value: Any) -> datetime:
    """json_build_object renders timestamptz as ISO text."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _loaded(model: type[M], values: dict[str, Any]) -> M:
    """A model instance built as the ORM builds one it loads from the database (no ``__init__``, no validation:
    the values are the database's), about 25 times cheaper than calling the model; a real, transient instance."""
    instance: M = manager_of_class(model).new_instance()
    fixed, factories = _defaults(model)
    state = instance.__dict__
    state.update(fixed)
    for name, factory in factories:
        state[name] = factory()
    state.update(values)
    return instance


@cache
def _defaults(model: type[SQLModel]) -> tuple[dict[str, Any], tuple[tuple[str, Callable[[], Any]], ...]]:
    """A model's field defaults (what its constructor fills in for a field not given): plain values, and
    factories called per instance. The first call also finishes setting up the mappers, as a model's constructor
    or the first query would."""
    configure_mappers()
    fixed: dict[str, Any] = {}
    factories: list[tuple[str, Callable[[], Any]]] = []
    for name, field in model.model_fields.items():
        if field.default_factory is not None:
            factories.append((name, field.default_factory))  # type: ignore[arg-type]
        elif not field.is_required():
            fixed[name] = field.default
    return fixed, tuple(factories)


def _claimed(record: Any, now: datetime) -> Claimed:
    row = _loaded(Notification, {column: record[column] for column in _NOTIFICATION_FIELDS})
    patient = None
    if record["p_id"] is not None:
        patient = _loaded(
            Patient,
            {
                "id": record["p_id"],
                "external_ref": record["external_ref"],
                "time_zone": record["time_zone"],
                "locale": record["locale"],
                "email": record["email"],
                "phone_e164": record["phone_e164"],
                "us_state": record["us_state"],
                "created_at": record["p_created_at"],
                "updated_at": record["p_updated_at"],
            },
        )
    devices = [
        _loaded(
            Device,
            {
                "id": d["id"],
                "patient_id": row.patient_id,
                "platform": d["platform"],
                "token": d["token"],
                "live": d["live"],
                "dead_reason": None,
                "dead_at": None,
                "created_at": _parse_instant(d["created_at"]),
                "last_seen_at": _parse_instant(d["last_seen_at"]),
            },
        )
        for d in record["devices"] or []
    ]
    preferences = [
        _loaded(
            Preference,
            {
                "id": f["id"],
                "patient_id": row.patient_id,
                "category": f["category"],
                "channel": f["channel"],
                "enabled": f["enabled"],
                "updated_at": _parse_instant(f["updated_at"]),
            },
        )
        for f in record["preferences"] or []
    ]
    capped = [
        (row.patient_id, int(nid), str(category), str(channel), _parse_instant(at))
        for nid, category, channel, at in record["capped_sends"] or []
    ]
    context = row.context or {}
    stale = (
        appointments.stale_for(
            context,
            record["appointment_status"],
            record["appointment_version"],
            record["appointment_starts_at"],
            now,
        )
        or surveys.stale_for(context, bool(record["survey_found"]), record["survey_completed_at"])
        or campaigns.stale_for(record["campaign_state"])
    )
    return Claimed(
        row=row,
        patient=patient,
        devices=devices,
        preferences=preferences,
        accepted_before=set(record["accepted_before"] or ()),
        consent=consent_from((c[0], c[1], bool(c[2])) for c in record["consent"] or []),
        capped_sends=capped,
        stale=stale,
        pause=care_pause.pause_from_columns(
            record["pause_paused"],
            record["pause_reason_code"],
            record["pause_until"],
            record["pause_holds_appointments"],
            record["pause_at"],
        ),
        survey_on_pause=record["survey_on_care_pause"],
    )


def counts(claimed: Claimed, now: datetime) -> Counts:
    return counts_from(claimed.capped_sends, [claimed.row.patient_id], now)[claimed.row.patient_id]


@dataclass(frozen=True)
class Settlement:
    notification_id: int
    state: State
    reason: str | None
    not_before: datetime | None = None
    uncount: bool = False


def settle(
    engine: Engine,
    settlements: Sequence[Settlement],
    *,
    now: datetime,
    holder: str,
    answer: Mapping[str, Any] | None = None,
) -> set[int]:
    """Settle rows this worker still holds in one statement; returns the ids it settled (a row it no longer holds
    is left to whoever does: see ``send._apply``). ``answer`` (a ``delivery_attempt`` row as column -> value, for
    a single settlement) is written by the same statement, held or not."""
    if not settlements:
        if answer is not None:
            record(engine, [answer])
        return set()
    if len(settlements) == 1:
        one = settlements[0]
        params: dict[str, Any] = {
            "id": one.notification_id,
            "state": one.state.value,
            "reason": one.reason[:500] if one.reason else None,
            "not_before": one.not_before,
            "uncount": 1 if one.uncount else 0,
            "now": now,
            "holder": holder,
        }
        if answer is None:
            written = run_raw(engine, SETTLE_ONE, params)
        else:
            if answer["notification_id"] != one.notification_id:
                raise ValueError("an answer is settled with its own row only")
            params.update({f"a_{column}": answer[column] for column in _ATTEMPT_COLUMNS})
            written = run_raw(engine, RECORD_AND_SETTLE_ONE, params)
        return {int(r["notification_id"]) for r in written}
    if answer is not None:
        raise ValueError("an answer is settled with a single row only")
    written = run_raw(
        engine,
        SETTLE,
        {
            "ids": [s.notification_id for s in settlements],
            "states": [s.state.value for s in settlements],
            "reasons": [s.reason[:500] if s.reason else None for s in settlements],
            "not_befores": [s.not_before for s in settlements],
            "uncounts": [1 if s.uncount else 0 for s in settlements],
            "now": now,
            "holder": holder,
        },
    )
    return {int(r["notification_id"]) for r in written}
