"""Outbound webhooks: the platform hears what happened, signed per the Standard Webhooks specification.

``events`` (types, PHI-free payloads read from the change logs), ``dispatch`` (logs -> deliveries past a
watermark; replay), ``sender`` (claim, sign, POST, settle, backoff), ``endpoints`` (register, list, disable, enable,
remove), ``metrics`` (what /metrics reports), ``actor`` (``send_webhooks``), ``cli``.
"""

from __future__ import annotations

from dataclasses import dataclass

import dramatiq
from sqlalchemy.engine import Engine

from worker.clock import Clock
from worker.outbound.actor import declare_sender_actor
from worker.outbound.dispatch import Dispatcher, replay
from worker.outbound.sender import Sender
from worker.settings import WebhookSettings

__all__ = ["Dispatcher", "Outbound", "Sender", "build_outbound", "replay"]


@dataclass
class Outbound:
    dispatcher: Dispatcher
    sender: Sender
    actor: dramatiq.Actor[[int], None]

    def tick(self) -> int:
        """One dispatcher tick (the scheduler's ``webhooks_dispatch`` job)."""
        return self.dispatcher.tick()

    def close(self) -> None:
        self.sender.close()


def build_outbound(engine: Engine, clock: Clock, broker: dramatiq.Broker, settings: WebhookSettings) -> Outbound:
    sender = Sender(engine, clock, settings)
    actor = declare_sender_actor(broker, sender, queue_name=settings.queue_name)

    def kick(endpoint_id: int) -> None:
        actor.send(endpoint_id)

    return Outbound(Dispatcher(engine, clock, settings, kick), sender, actor)
