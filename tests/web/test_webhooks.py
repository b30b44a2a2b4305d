"""Provider webhooks through the real app: signed callbacks apply once; forged, stale or replayed do nothing."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import select

from integrations.twilio import twilio_signature
from tests.conftest import attempts, create_notification, create_patient, events, load
from tests.web.conftest import SENDGRID_KEY, TWILIO_TOKEN, Api, assert_refused
from worker.categories import Category, Channel
from worker.consent import current_consent
from worker.db import session_scope
from worker.delivery import deliver
from worker.models import Notification
from worker.models_consent import ConsentEvent
from worker.states import State
from worker.web.app import create_web_app

STATUS_URL = "http://testserver/webhooks/twilio/status"


def _sent(api: Api, channel: Channel, category: Category = Category.CARE_TEAM_MESSAGE) -> tuple[int, str]:
    nid = create_notification(api.app, create_patient(api.app, devices=()), category=category, channels=[channel])
    assert deliver(api.app.deps, nid).state is State.SENT
    ref = attempts(api.app, nid)[0].provider_ref
    assert ref is not None
    return nid, ref


def _twilio_post(api: Api, form: dict[str, str], *, token: str = TWILIO_TOKEN):  # type: ignore[no-untyped-def]
    return api.client.post(
        "/webhooks/twilio/status",
        content=urlencode(form),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(token, STATUS_URL, form),
        },
    )


def test_twilio_status_callback_applies_once(api: Api) -> None:
    nid, sid = _sent(api, Channel.SMS)
    form = {"MessageSid": sid, "MessageStatus": "delivered", "AccountSid": "ACtest", "To": "+12125550123"}
    first = _twilio_post(api, form)
    assert first.status_code == 200 and first.json() == {"result": "delivered"}
    assert load(api.app, nid).state == State.DELIVERED
    replay = _twilio_post(api, form)
    assert replay.status_code == 200 and replay.json() == {"result": "duplicate"}
    assert [e[1] for e in events(api.app, nid)].count("delivered") == 1


def test_forged_twilio_callbacks_change_nothing(api: Api) -> None:
    nid, sid = _sent(api, Channel.SMS)
    form = {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": "21610"}
    assert_refused(_twilio_post(api, form, token="someone-elses-token"), 403, "X-Twilio-Signature")
    unsigned = api.client.post(
        "/webhooks/twilio/status",
        content=urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_refused(unsigned, 403, "X-Twilio-Signature")
    # A genuine signature over other parameters does not cover a tampered body.
    signature = twilio_signature(TWILIO_TOKEN, STATUS_URL, {**form, "MessageStatus": "sent"})
    tampered = api.client.post(
        "/webhooks/twilio/status",
        content=urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature},
    )
    assert_refused(tampered, 403, "X-Twilio-Signature")
    assert load(api.app, nid).state == State.SENT
    with session_scope(api.app.engine) as session:
        assert current_consent(session, load(api.app, nid).patient_id) == {}
    # The real one, later, still applies: refusals left no receipt behind.
    assert _twilio_post(api, form).json() == {"result": "failed"}


def test_twilio_callback_missing_fields_is_400_naming_the_field(api: Api) -> None:
    assert_refused(_twilio_post(api, {"MessageStatus": "delivered"}), 400, "MessageSid")


def test_unconfigured_webhooks_refuse_rather_than_trust(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    with TestClient(create_web_app(app)) as client:
        assert_refused(client.post("/webhooks/twilio/status", content=b"a=b"), 503, "X-Twilio-Signature")
        assert_refused(
            client.post("/webhooks/sendgrid/events", content=b"[]"), 503, "X-Twilio-Email-Event-Webhook-Signature"
        )


def _sendgrid_post(api: Api, events_: list[dict[str, object]], *, timestamp: int | None = None, key=SENDGRID_KEY):  # type: ignore[no-untyped-def]
    body = json.dumps(events_).encode()
    ts = str(timestamp if timestamp is not None else int(api.app.clock.now().timestamp()))
    signature = base64.b64encode(key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    return api.client.post(
        "/webhooks/sendgrid/events",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": signature,
            "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        },
    )


def test_sendgrid_events_apply_once_per_event(api: Api) -> None:
    delivered_id, _ = _sent(api, Channel.EMAIL, Category.ACCOUNT_NOTICE)
    bounced_id, _ = _sent(api, Channel.EMAIL, Category.ACCOUNT_NOTICE)
    batch: list[dict[str, object]] = [
        {"event": "delivered", "notification_id": str(delivered_id), "sg_event_id": "ev-1"},
        {"event": "bounce", "notification_id": str(bounced_id), "sg_event_id": "ev-2"},
        {"event": "open", "notification_id": str(bounced_id), "sg_event_id": "ev-3"},
    ]
    first = _sendgrid_post(api, batch)
    assert first.status_code == 200 and first.json() == {"result": {"delivered": 1, "failed": 1, "ignored": 1}}
    assert load(api.app, delivered_id).state == State.DELIVERED and load(api.app, bounced_id).state == State.FAILED
    again = _sendgrid_post(api, batch)  # SendGrid retries a batch it thinks failed: nothing happens twice
    assert again.json() == {"result": {"duplicate": 3}}
    assert [e[1] for e in events(api.app, delivered_id)].count("delivered") == 1


def test_forged_or_stale_sendgrid_events_change_nothing(api: Api) -> None:
    nid, _ = _sent(api, Channel.EMAIL, Category.ACCOUNT_NOTICE)
    batch: list[dict[str, object]] = [{"event": "delivered", "notification_id": str(nid), "sg_event_id": "ev-9"}]
    forger = ec.generate_private_key(ec.SECP256R1())
    assert_refused(_sendgrid_post(api, batch, key=forger), 403, "X-Twilio-Email-Event-Webhook-Signature")
    stale = int(api.app.clock.now().timestamp()) - 3600  # a genuine capture from an hour ago, replayed
    assert_refused(_sendgrid_post(api, batch, timestamp=stale), 403, "X-Twilio-Email-Event-Webhook-Timestamp")
    assert load(api.app, nid).state == State.SENT
    assert _sendgrid_post(api, batch).json() == {"result": {"delivered": 1}}


def test_sendgrid_body_must_be_an_event_array(api: Api) -> None:
    assert_refused(_sendgrid_post(api, {"event": "x"}), 400, "body")  # type: ignore[arg-type]


SMS_URL = "http://testserver/webhooks/twilio/sms"


def _inbound(api: Api, form: dict[str, str], *, token: str = TWILIO_TOKEN):  # type: ignore[no-untyped-def]
    return api.client.post(
        "/webhooks/twilio/sms",
        content=urlencode(form),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(token, SMS_URL, form),
        },
    )


def _ledger_size(api: Api) -> int:
    with session_scope(api.app.engine) as session:
        return len(session.scalars(select(ConsentEvent)).all())


def _notification_count(api: Api) -> int:
    with session_scope(api.app.engine) as session:
        return len(session.scalars(select(Notification)).all())


def _sms_consent(api: Api, patient_id: int) -> dict[tuple[str, str | None], bool]:
    with session_scope(api.app.engine) as session:
        return current_consent(session, patient_id)


def test_inbound_stop_opts_out_once_and_replays_change_nothing(api: Api) -> None:
    patient_id = create_patient(api.app, phone="+12125550123", devices=())
    form = {"MessageSid": "SM0001", "From": "+12125550123", "To": "+15005550006", "Body": "Stop"}
    answer = _inbound(api, form)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/xml")
    assert "<Response></Response>" in answer.text
    assert _sms_consent(api, patient_id) == {("sms", None): False}
    ledger_before, replies_before = _ledger_size(api), _notification_count(api)
    assert replies_before == 1  # one confirmation text, through the outbox
    assert _inbound(api, form).status_code == 200  # Twilio retried, or someone replays a capture
    assert (_ledger_size(api), _notification_count(api)) == (ledger_before, replies_before)


def test_forged_inbound_sms_changes_nothing(api: Api) -> None:
    patient_id = create_patient(api.app, phone="+12125550123", devices=())
    form = {"MessageSid": "SM0002", "From": "+12125550123", "Body": "STOP"}
    assert_refused(_inbound(api, form, token="not-our-token"), 403, "X-Twilio-Signature")
    assert _sms_consent(api, patient_id) == {}
    assert_refused(_inbound(api, {"From": "+12125550123", "Body": "STOP"}), 400, "MessageSid")


def test_a_signature_header_that_is_not_ascii_is_refused_not_a_crash(api: Api) -> None:
    # No secret needed to send this: before, the constant-time compare raised on it (a 500 for anyone).
    form = {"MessageSid": "SM1", "MessageStatus": "delivered", "From": "+12125550123"}
    for path in ("/webhooks/twilio/status", "/webhooks/twilio/sms"):
        response = api.client.post(
            path,
            content=urlencode(form),
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "sîgné".encode()},
        )
        assert_refused(response, 403, "X-Twilio-Signature")
    response = api.client.post(
        "/webhooks/sendgrid/events",
        content=b"[]",
        headers={
            "X-Twilio-Email-Event-Webhook-Signature": "sîgné".encode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": "1",
        },
    )
    assert_refused(response, 403, "X-Twilio-Email-Event-Webhook-Signature")


def test_signed_sendgrid_events_with_impossible_notification_ids_are_ignored(api: Api) -> None:
    nid, _ = _sent(api, Channel.EMAIL, Category.ACCOUNT_NOTICE)
    batch: list[dict[str, object]] = [
        {"event": "delivered", "notification_id": "²", "sg_event_id": "ev-sup"},  # isdigit() but not int()-able
        {"event": "delivered", "notification_id": str(2**64), "sg_event_id": "ev-big"},  # past BIGINT
        {"event": "delivered", "notification_id": 2**63, "sg_event_id": "ev-big-int"},
        {"event": "delivered", "notification_id": True, "sg_event_id": "ev-bool"},
        {"event": "delivered", "notification_id": "0", "sg_event_id": "ev-zero"},
        {"event": "delivered", "notification_id": str(nid), "sg_event_id": "ev-ok"},
    ]
    answer = _sendgrid_post(api, batch)
    assert answer.status_code == 200 and answer.json() == {"result": {"ignored": 5, "delivered": 1}}, answer.text
    assert load(api.app, nid).state == State.DELIVERED


def test_signed_sendgrid_oddities_are_4xx_or_recorded_never_5xx(api: Api) -> None:
    deep = json.loads("[" * 50 + "]" * 50)  # a body nested deeper than the parser goes is refused, not a crash
    body = b"[" * 30_000 + b"]" * 30_000
    ts = str(int(api.app.clock.now().timestamp()))
    signature = base64.b64encode(SENDGRID_KEY.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    nested = api.client.post(
        "/webhooks/sendgrid/events",
        content=body,
        headers={"X-Twilio-Email-Event-Webhook-Signature": signature, "X-Twilio-Email-Event-Webhook-Timestamp": ts},
    )
    assert_refused(nested, 400, "body")
    # Event ids that are long, not text, or hold bytes a database refuses: each is still told apart, once.
    odd: list[dict[str, object]] = [
        {"event": "open", "sg_event_id": "x" * 300},
        {"event": "open", "sg_event_id": "x" * 299 + "y"},
        {"event": "open", "sg_event_id": "nul\x00byte"},
        {"event": "open", "sg_event_id": deep},
        {"event": "open", "sg_event_id": 7},
    ]
    first = _sendgrid_post(api, odd)
    assert first.status_code == 200 and first.json() == {"result": {"ignored": 5}}, first.text
    again = _sendgrid_post(api, odd)
    assert again.json() == {"result": {"ignored": 1, "duplicate": 4}}  # the list id is no id: applied each time


def test_twilio_fields_that_cannot_be_identifiers_are_400(api: Api) -> None:
    for form, field in [
        ({"MessageSid": "SM\x00", "MessageStatus": "delivered"}, "MessageSid"),
        ({"MessageSid": "S" * 65, "MessageStatus": "delivered"}, "MessageSid"),
        ({"MessageSid": "SM1", "MessageStatus": "délivré"}, "MessageStatus"),
        ({"MessageSid": "SM1", "MessageStatus": "failed", "ErrorCode": "2161\x000"}, "ErrorCode"),
    ]:
        assert_refused(_twilio_post(api, form), 400, field)


def test_inbound_signature_is_checked_against_the_pinned_url_not_the_host_header(api: Api) -> None:
    """A genuine Twilio request captured on another host (staging on the same account, say) and replayed here
    with that Host header must not verify: the signed URL comes from settings, never from the request."""
    patient_id = create_patient(api.app, phone="+12125550123", devices=())
    form = {"MessageSid": "SM0003", "From": "+12125550123", "Body": "STOP"}
    elsewhere = "http://staging.example/webhooks/twilio/sms"
    replayed = api.client.post(
        "/webhooks/twilio/sms",
        content=urlencode(form),
        headers={
            "Host": "staging.example",
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(TWILIO_TOKEN, elsewhere, form),
        },
    )
    assert_refused(replayed, 403, "X-Twilio-Signature")
    status_form = {"MessageSid": "SMx", "MessageStatus": "failed", "ErrorCode": "21610"}
    replayed_status = api.client.post(
        "/webhooks/twilio/status",
        content=urlencode(status_form),
        headers={
            "Host": "staging.example",
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(
                TWILIO_TOKEN, "http://staging.example/webhooks/twilio/status", status_form
            ),
        },
    )
    assert_refused(replayed_status, 403, "X-Twilio-Signature")
    assert _sms_consent(api, patient_id) == {} and _notification_count(api) == 0
    assert _inbound(api, form).status_code == 200  # signed for our own URL: applied
    assert _sms_consent(api, patient_id) == {("sms", None): False}


def test_twilio_webhooks_without_a_pinned_url_refuse_rather_than_trust_the_host(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(twilio_auth_token=TWILIO_TOKEN)
    patient_id = create_patient(app, phone="+12125550123", devices=())
    form = {"MessageSid": "SM0004", "From": "+12125550123", "Body": "STOP"}
    with TestClient(create_web_app(app)) as client:
        for path in ("/webhooks/twilio/sms", "/webhooks/twilio/status"):
            signed = twilio_signature(TWILIO_TOKEN, f"http://testserver{path}", form)
            response = client.post(
                path,
                content=urlencode(form),
                headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signed},
            )
            body = assert_refused(response, 503, "X-Twilio-Signature")
            assert "CARENOTIFY_PROVIDER__TWILIO_" in str(body["message"])
    with session_scope(app.engine) as session:
        assert current_consent(session, patient_id) == {}
