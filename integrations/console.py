"""The console sink: the embedded default's provider. Prints what would be sent, as JSON lines.

It accepts every message, so a newcomer sees the whole path work with no provider account. Addresses are
masked; text is already PHI-free by construction (templates).
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from pathlib import Path
from typing import TextIO

from integrations.base import OutboundMessage, Outcome, SendResult, mask
from worker.categories import Channel


class ConsoleProvider:
    """Writes each message to standard output or to a file (``console_sink``)."""

    _lock = threading.Lock()

    def __init__(self, *, channel: Channel, sink: str = "-") -> None:
        self.name = "console"
        self.channel = channel
        self._sink = sink

    def send(self, *, message: OutboundMessage) -> SendResult:
        ref = f"console-{uuid.uuid4()}"
        line = json.dumps(
            {
                "provider": "console",
                "ref": ref,
                "notification_id": message.notification_id,
                "channel": message.channel.value,
                "category": message.category,
                "to": mask(message.address),
                "title": message.title,
                "body": message.body,
            },
            ensure_ascii=False,
        )
        with self._lock:
            if self._sink == "-":
                self._write(sys.stdout, line)
            else:
                path = Path(self._sink)
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as fh:
                    self._write(fh, line)
        return SendResult(outcome=Outcome.ACCEPTED, provider_ref=ref)

    @staticmethod
    def _write(stream: TextIO, line: str) -> None:
        stream.write(line + "\n")
        stream.flush()
