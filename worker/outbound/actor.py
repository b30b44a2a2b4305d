"""The ``send_webhooks`` actor: thin; the database holds every delivery's state and schedule."""

from __future__ import annotations

import dramatiq

from worker.outbound.sender import Sender


def declare_sender_actor(broker: dramatiq.Broker, sender: Sender, *, queue_name: str) -> dramatiq.Actor[[int], None]:
    """Retries are the database's (backoff per delivery, on the injected clock), not the broker's: a sender that
    crashes leaves its claims to lapse, and the dispatcher queues a new one."""

    def send_webhooks(endpoint_id: int) -> None:
        sender.run(endpoint_id)

    return dramatiq.actor(
        broker=broker,
        actor_name="send_webhooks",
        queue_name=queue_name,
        max_retries=0,
        time_limit=int((sender.settings.run_seconds + 2 * sender.settings.timeout_seconds + 30) * 1000),
    )(send_webhooks)
