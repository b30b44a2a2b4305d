"""The /metrics rollup: settled notifications and provider calls counted once, read in microseconds.

The scheduler's ``metrics_rollup`` job (:mod:`worker.metrics.rollup`) folds the append-only logs
(``notification_event``, ``delivery_attempt``) into these few rows, reading each log past its watermark; a scrape
reads them instead of the whole notification table. Aggregates only: no patient, no notification id.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Integer, String
from sqlmodel import Field, SQLModel

from worker.db import UTCDateTime


def _count() -> int:
    return Field(default=0, sa_column=Column(BigInteger, nullable=False))  # type: ignore[no-any-return]


def _mark() -> int:
    return Field(default=0, sa_column=Column(BigInteger, nullable=False))  # type: ignore[no-any-return]


class MetricsCursor(SQLModel, table=True):
    """How far the rollup has read each log: every id at or below a mark is counted, none above it.

    One row (``id = 1``). Its row lock serialises the rollup with itself (two schedulers) and with erasure.
    """

    __tablename__ = "metrics_cursor"

    id: int = Field(default=1, sa_column=Column(Integer, primary_key=True, autoincrement=False))
    event_mark: int = _mark()
    attempt_mark: int = _mark()
    #: When the marks last moved (for an operator asking whether the rollup runs).
    rolled_up_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class NotificationCount(SQLModel, table=True):
    """Settled (terminal) notifications by state, category and the provider of their last attempt."""

    __tablename__ = "metrics_notification_count"

    state: str = Field(sa_column=Column(String(16), primary_key=True))
    category: str = Field(sa_column=Column(String(32), primary_key=True))
    #: The provider of the notification's last delivery attempt; ``none`` if it never had one.
    provider: str = Field(sa_column=Column(String(32), primary_key=True))
    count: int = _count()


class ProviderCallCount(SQLModel, table=True):
    """Delivery attempts by the notification's category, channel, provider and outcome."""

    __tablename__ = "metrics_provider_call_count"

    category: str = Field(sa_column=Column(String(32), primary_key=True))
    channel: str = Field(sa_column=Column(String(16), primary_key=True))
    provider: str = Field(sa_column=Column(String(32), primary_key=True))
    outcome: str = Field(sa_column=Column(String(16), primary_key=True))
    count: int = _count()
