"""A scripted provider for tests and demos of failure handling: answers from a queue, records every call.

A fake over a patch: our own delivery code runs unchanged against it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Sequence

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

    def script(self, results: Iterable[SendResult]) -> None:
        """Answer the next sends with ``results`` (after any still scripted), then ``default`` again."""
        with self._lock:
            self._script.extend(results)

    def send(self, *, message: OutboundMessage) -> SendResult:
        with self._lock:
            self.sent.append(message)
            result = self._script.popleft() if self._script else self._default
        if result.outcome is Outcome.ACCEPTED and result.provider_ref is None:
            return SendResult(outcome=Outcome.ACCEPTED, provider_ref=f"{self.name}-{len(self.sent)}")
        return result


class ScriptedBulkProvider(ScriptedProvider):
    """A :class:`~integrations.base.BulkProvider` fake: ``send_many`` answers each message from the same script as
    ``send`` (in order), and records every call's messages in ``batches``.

    ``refuse_batches`` scripts whole-call refusals first: the next calls answer every message with that result.
    Every message given lands in ``sent`` either way (so PHI checks that scan ``sent`` see bulk payloads too).
    """

    def __init__(
        self,
        *,
        name: str = "fake-bulk",
        channel: Channel = Channel.EMAIL,
        script: Iterable[SendResult] = (),
        default: SendResult | None = None,
        max_batch: int = 1000,
        refuse_batches: Iterable[SendResult] = (),
    ) -> None:
        super().__init__(name=name, channel=channel, script=script, default=default)
        self.max_batch = max_batch
        self._refusals: deque[SendResult] = deque(refuse_batches)
        self.batches: list[list[OutboundMessage]] = []

    def send_many(self, *, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        with self._lock:
            self.batches.append(list(messages))
            refusal = self._refusals.popleft() if self._refusals else None
            if refusal is not None:
                self.sent.extend(messages)
        if refusal is not None:
            return [refusal for _ in messages]
        return [self.send(message=message) for message in messages]
