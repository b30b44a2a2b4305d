"""The outbox: a notification is a committed row before anything is queued, and the relay queues what is due
and has no live broker message (scheduled rows coming due, a lost message, a dead worker's claim)."""

from worker.outbox.notifications import (
    OPEN_STATES,
    Enqueue,
    Submitted,
    add_notification,
    cancel_open,
    give_up,
    id_of,
    mark_enqueued,
    submit,
    transition,
)
from worker.outbox.relay import Relay, forget_enqueued, relay

__all__ = [
    "OPEN_STATES",
    "Enqueue",
    "Submitted",
    "add_notification",
    "cancel_open",
    "give_up",
    "id_of",
    "mark_enqueued",
    "Relay",
    "forget_enqueued",
    "relay",
    "submit",
    "transition",
]
