"""The notification state machine: every allowed transition, written down in one table."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    PENDING = "pending"  # committed, waiting to be claimed (maybe not before ``not_before``)
    DEFERRED = "deferred"  # held back by policy (quiet hours) until ``not_before``
    SENDING = "sending"  # claimed by one worker, under a lease
    RETRYING = "retrying"  # a transient failure; tried again at ``not_before``
    SENT = "sent"  # accepted by a provider
    DELIVERED = "delivered"  # the provider confirmed delivery to the handset/inbox
    SUPPRESSED = "suppressed"  # policy said no (muted, opted out, erased, no consent)
    FAILED = "failed"  # permanently failed or retries exhausted
    EXPIRED = "expired"  # no longer useful (too late)
    CANCELLED = "cancelled"  # withdrawn by its trigger (appointment cancelled, survey completed)
    FOLDED = "folded"  # a care-team notice joined an unread one sent moments before (the reason names it); never sent


TERMINAL: frozenset[State] = frozenset(
    {State.SENT, State.DELIVERED, State.SUPPRESSED, State.FAILED, State.EXPIRED, State.CANCELLED, State.FOLDED}
)

#: States from which a worker may claim the row (compare-and-set to SENDING).
CLAIMABLE: frozenset[State] = frozenset({State.PENDING, State.DEFERRED, State.RETRYING})

ALLOWED: dict[State, frozenset[State]] = {
    # FOLDED: decided at creation (worker/outbox/digest.py), so only ever straight from PENDING.
    State.PENDING: frozenset({State.SENDING, State.CANCELLED, State.EXPIRED, State.SUPPRESSED, State.FOLDED}),
    State.DEFERRED: frozenset({State.SENDING, State.CANCELLED, State.EXPIRED, State.SUPPRESSED}),
    State.RETRYING: frozenset({State.SENDING, State.CANCELLED, State.EXPIRED, State.FAILED, State.SUPPRESSED}),
    State.SENDING: frozenset(
        {
            State.SENT,
            State.SUPPRESSED,
            State.FAILED,
            State.EXPIRED,
            State.CANCELLED,
            State.DEFERRED,
            State.RETRYING,
            # A lease that ran out (worker killed mid-send) is claimed again: SENDING -> SENDING.
            State.SENDING,
        }
    ),
    # Receipts: the provider confirms or reports a later failure of a message it had accepted.
    State.SENT: frozenset({State.DELIVERED, State.FAILED}),
    State.DELIVERED: frozenset(),
    State.SUPPRESSED: frozenset(),
    # An operator may replay a failed notification (dead letter replay).
    State.FAILED: frozenset({State.PENDING}),
    State.EXPIRED: frozenset(),
    State.CANCELLED: frozenset(),
    State.FOLDED: frozenset(),
}


def can_transition(source: State, target: State) -> bool:
    return target in ALLOWED[source]
