"""Care-team message notices beyond the first send: the digest's settings, read receipts, and the follow-up of a
message still unread (escalation). The digest itself is decided at submit time (:mod:`worker.outbox.digest`)."""

from worker.care_team.escalation import Scan, escalate_due
from worker.care_team.reads import ReadReceipt, mark_read
from worker.care_team.rules import digest_rule, duration_text

__all__ = ["ReadReceipt", "Scan", "digest_rule", "duration_text", "escalate_due", "mark_read"]
