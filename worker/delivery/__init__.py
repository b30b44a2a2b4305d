"""Delivery: claim a row and hold it while the worker lives, decide at send time, render, call the providers
(failover, circuit breakers, rate limits, bulk calls), write each answer down, settle."""

from worker.delivery.batch import deliver_many
from worker.delivery.send import AnswerNotRecorded, DeliveryDeps, Report, deliver

__all__ = ["AnswerNotRecorded", "DeliveryDeps", "Report", "deliver", "deliver_many"]
