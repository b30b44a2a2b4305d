"""Outbound-webhook endpoints through the API (scope ``webhooks``): the same as ``carenotify webhooks ...``."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, Field

from worker.outbound.dispatch import replay
from worker.outbound.endpoints import (
    EndpointView,
    add_endpoint,
    get_endpoint,
    list_endpoints,
    remove_endpoint,
    set_enabled,
)
from worker.outbound.events import EventType
from worker.web.auth import FORBIDDEN, WebhookAdmin
from worker.web.deps import AppDep, IdempotencyKey
from worker.web.errors import ErrorBody
from worker.web.schemas import Strict

router = APIRouter(
    prefix="/v1/webhook-endpoints",
    tags=["outbound webhooks"],
    dependencies=[IdempotencyKey],
    responses={401: {"model": ErrorBody}, **FORBIDDEN, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)


class EndpointIn(Strict):
    url: str = Field(max_length=2048, description="Where to POST events (https; http for local receivers)")
    events: list[str] = Field(
        min_length=1,
        max_length=len(EventType) + 1,
        description=f"Event types ({', '.join(EventType)}), or ['*'] for all",
    )
    ordered: bool = Field(False, description="Deliver one patient's events in the order they happened")
    description: str | None = Field(None, max_length=200)


class EndpointOut(BaseModel):
    id: int
    url: str
    description: str | None
    events: list[str]
    ordered: bool
    enabled: bool
    disabled_reason: str | None
    disabled_detail: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    created_at: datetime

    @classmethod
    def of(cls, view: EndpointView) -> EndpointOut:
        return cls(**view.__dict__)


class EndpointCreated(EndpointOut):
    secret: str = Field(description="The signing secret (whsec_...): shown this once")


class ReplayIn(Strict):
    since: AwareDatetime
    endpoint_id: int | None = None


class ReplayOut(BaseModel):
    queued: int


@router.post("", status_code=201)
def create(body: EndpointIn, app: AppDep, caller: WebhookAdmin) -> EndpointCreated:
    """Register an endpoint. The answer carries its signing secret, which is never shown again."""
    view, secret = add_endpoint(
        app.engine,
        app.clock,
        url=body.url,
        events=[str(e) for e in body.events],
        ordered=body.ordered,
        description=body.description,
    )
    return EndpointCreated(secret=secret, **view.__dict__)


@router.get("")
def index(app: AppDep, caller: WebhookAdmin) -> list[EndpointOut]:
    """Every endpoint and its health (never a secret)."""
    return [EndpointOut.of(v) for v in list_endpoints(app.engine)]


@router.get("/{endpoint_id}")
def show(endpoint_id: int, app: AppDep, caller: WebhookAdmin) -> EndpointOut:
    return EndpointOut.of(get_endpoint(app.engine, endpoint_id))


@router.post("/{endpoint_id}/disable")
def disable(endpoint_id: int, app: AppDep, caller: WebhookAdmin) -> EndpointOut:
    """Stop sending to it; pending deliveries wait."""
    return EndpointOut.of(set_enabled(app.engine, app.clock, endpoint_id, enabled=False))


@router.post("/{endpoint_id}/enable")
def enable(endpoint_id: int, app: AppDep, caller: WebhookAdmin) -> EndpointOut:
    """Send to it again; pending deliveries resume (replay sends what it missed while off)."""
    return EndpointOut.of(set_enabled(app.engine, app.clock, endpoint_id, enabled=True))


@router.delete("/{endpoint_id}", status_code=204)
def remove(endpoint_id: int, app: AppDep, caller: WebhookAdmin) -> None:
    remove_endpoint(app.engine, endpoint_id)


@router.post("/replay")
def replay_events(body: ReplayIn, app: AppDep, caller: WebhookAdmin) -> ReplayOut:
    """Send every event since ``since`` again (to one endpoint or every enabled one), with its original id."""
    return ReplayOut(queued=replay(app.engine, app.clock, since=body.since, endpoint_id=body.endpoint_id))
