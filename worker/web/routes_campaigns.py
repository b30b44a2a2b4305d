"""Marketing campaigns: create a draft, launch it now or at a time, cancel it, read its figures."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Path

from worker.campaigns import campaign_stats, cancel_campaign, create_campaign, launch_campaign
from worker.errors import InvalidInput
from worker.web.auth import FORBIDDEN, CampaignReader, CampaignWriter
from worker.web.deps import AppDep, IdempotencyKey
from worker.web.errors import ApiError, ErrorBody, not_found_as
from worker.web.schemas import CampaignIn, CampaignOut, LaunchIn

router = APIRouter(
    prefix="/v1/campaigns",
    tags=["campaigns"],
    responses={401: {"model": ErrorBody}, **FORBIDDEN, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)

CampaignId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _out(app: AppDep, campaign_id: int) -> CampaignOut:
    with not_found_as("campaign_id"):
        return CampaignOut.model_validate(asdict(campaign_stats(app.engine, campaign_id)))


@router.post("", status_code=201, dependencies=[IdempotencyKey])
def create(body: CampaignIn, app: AppDep, caller: CampaignWriter) -> CampaignOut:
    """Store a draft. Nothing is sent until it is launched."""
    campaign_id = create_campaign(
        app.engine,
        app.clock,
        name=body.name,
        template=body.template,
        channels=body.channels,
        audience=body.audience.model_dump(mode="json", exclude_none=True),
        created_by=caller.name,
    )
    return _out(app, campaign_id)


@router.post(
    "/{campaign_id}/launch", status_code=202, dependencies=[IdempotencyKey], responses={409: {"model": ErrorBody}}
)
def launch(campaign_id: CampaignId, body: LaunchIn, app: AppDep, caller: CampaignWriter) -> CampaignOut:
    """Launch now or at ``launch_at``. The scheduler fans it out in chunks; each recipient's own quiet hours,
    consent, mutes and frequency cap apply, at fan-out and again at send time."""
    with not_found_as("campaign_id"):
        try:
            launch_campaign(
                app.engine,
                app.clock,
                app.settings.campaigns,
                campaign_id,
                launch_at=body.launch_at,
                ends_at=body.ends_at,
            )
        except InvalidInput as exc:
            if exc.field != "state":
                raise
            raise ApiError(409, "conflict", "campaign_id", f"campaign_id: {exc.problem}") from None
    return _out(app, campaign_id)


@router.post("/{campaign_id}/cancel", dependencies=[IdempotencyKey])
def cancel(campaign_id: CampaignId, app: AppDep, caller: CampaignWriter) -> CampaignOut:
    """Stop it: no more fan-out, and every notification not yet sent is cancelled (with a reason)."""
    with not_found_as("campaign_id"):
        cancel_campaign(app.engine, app.clock, campaign_id)
    return _out(app, campaign_id)


@router.get("/{campaign_id}")
def stats(campaign_id: CampaignId, app: AppDep, caller: CampaignReader) -> CampaignOut:
    """The campaign and its figures: audience, exclusions by reason, notifications by state, accepted per channel."""
    return _out(app, campaign_id)
