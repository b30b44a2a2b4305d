"""Retention: what carenotify keeps, and for how long (``[retention]`` settings).

- :mod:`.notifications`: terminal notifications, their events and provider calls, ``retention.days`` after they
  settled (default 400).
- :mod:`.ledger`: consent and care-pause ledger entries, ``retention.consent_years`` (default 5) after they stopped
  being in force; a patient's current consent and pause are kept.
- :mod:`.web_records`: expired Idempotency-Keys and webhook receipts, after their own (much shorter) lifetimes.
- :mod:`.job`: the scheduler's ``retention`` job and ``carenotify db purge [--dry-run]``.
"""

from worker.retention.job import TABLES, Retention

__all__ = ["TABLES", "Retention"]
