from __future__ import annotations

import pytest

from tests.conftest import create_notification, create_patient, load
from worker.db import session_scope
from worker.errors import IllegalTransition
from worker.models import Notification
from worker.outbox import transition
from worker.states import ALLOWED, TERMINAL, State


def test_every_state_has_a_row_and_every_non_terminal_state_can_end() -> None:
    assert set(ALLOWED) == set(State)
    for state in set(State) - TERMINAL:
        assert ALLOWED[state] & TERMINAL, f"{state} can never reach a terminal state"


def test_terminal_states_only_move_for_receipts_or_replay() -> None:
    assert ALLOWED[State.SENT] == {State.DELIVERED, State.FAILED}
    assert ALLOWED[State.FAILED] == {State.PENDING}
    for state in (State.DELIVERED, State.SUPPRESSED, State.EXPIRED, State.CANCELLED):
        assert ALLOWED[state] == frozenset()


def test_illegal_transition_raises_and_writes_nothing(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    nid = create_notification(app, create_patient(app))
    with pytest.raises(IllegalTransition, match="pending -> delivered"):
        with session_scope(app.engine) as session:
            row = session.get(Notification, nid)
            assert row is not None
            transition(session, row, State.DELIVERED, reason="x", now=app.clock.now())
    assert load(app, nid).state == State.PENDING
