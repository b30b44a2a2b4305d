"""A scripted provider for tests and demos of failure handling: answers from a queue, records every call.

A fake over a patch: our own delivery code runs unchanged against it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

from integrations.base import OutboundMessage, Outcome, SendResult
from worker.categories import Channel


class ScriptedProvider:
    """Returns the scripted results in order, then ``default`` forever."""

    def __init__(
        self,
        *,
        name: str = "fake",
        channel: Channel = Channel.PUSH,
        script: Iterable[SendResult] = (),
        default: SendResult | None = None,
    ) -> None:
        self.name = name
        self.channel = channel
        self._script: deque[SendResult] = deque(script)
        self._default = default or SendResult(outcome=Outcome.ACCEPTED)
        self._lock = threading.Lock()
        self.sent: list[OutboundMessage] = []

    def send(self, *, message: OutboundMessage) -> SendResult:
        with self._lock:
            self.sent.append(message)
            result = self._script.popleft() if self._script else self._default
        if result.outcome is Outcome.ACCEPTED and result.provider_ref is None:
            return SendResult(outcome=Outcome.ACCEPTED, provider_ref=f"{self.name}-{len(self.sent)}")
        return result
