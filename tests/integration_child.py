"""Run as a child process by the integration tests: submits one notification, then dies as told.

``kill-after-commit``: SIGKILLs itself inside enqueue, i.e. after the row is committed and before any
message reaches the broker: the crash the outbox relay exists for.
"""

from __future__ import annotations

import os
import signal
import sys

from worker.bootstrap import build_app
from worker.patients import upsert_patient
from worker.settings import load_settings


def main() -> None:
    mode, ref, key = sys.argv[1], sys.argv[2], sys.argv[3]
    app = build_app(load_settings(), broker_namespace=os.environ["TEST_BROKER_NAMESPACE"])
    patient_id = upsert_patient(
        app.engine, app.clock, external_ref=ref, time_zone="America/Denver", email="kill@example.org"
    )

    def enqueue(notification_id: int) -> None:
        if mode == "kill-after-commit":
            os.kill(os.getpid(), signal.SIGKILL)
        app.enqueue(notification_id)

    from worker.outbox import submit

    submit(app.engine, app.clock, enqueue, patient_id=patient_id, category="account_notice", idempotency_key=key)


if __name__ == "__main__":
    main()
