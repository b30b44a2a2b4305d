"""The unsubscribe link and RFC 8058 one-click: signed tokens only; a GET alone changes nothing."""

from __future__ import annotations

from datetime import timedelta

from tests.conftest import create_patient
from tests.web.conftest import SIGNING_KEY, Api, assert_refused
from worker.consent import current_consent
from worker.db import session_scope
from worker.unsubscribe import make_token, sign_payload


def _consent(api: Api, patient_id: int) -> dict[tuple[str, str | None], bool]:
    with session_scope(api.app.engine) as session:
        return current_consent(session, patient_id)


def test_link_shows_a_page_and_one_click_post_unsubscribes(api: Api) -> None:
    patient_id = create_patient(api.app)
    token = make_token(SIGNING_KEY, patient_id=patient_id, now=api.app.clock.now())
    page = api.client.get(f"/v1/unsubscribe/{token}")
    assert page.status_code == 200 and "<form method='post'" in page.text
    assert _consent(api, patient_id) == {}  # a mail scanner following the link unsubscribes nobody
    one_click = api.client.post(f"/v1/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200 and "unsubscribed" in one_click.text
    assert _consent(api, patient_id) == {("email", "marketing"): False}
    assert api.client.post(f"/v1/unsubscribe/{token}").status_code == 200  # again: still out, still 200
    assert _consent(api, patient_id) == {("email", "marketing"): False}


def test_forged_or_expired_tokens_are_refused_and_change_nothing(api: Api) -> None:
    patient_id = create_patient(api.app)
    forged = make_token("someone-elses-key", patient_id=patient_id, now=api.app.clock.now())
    assert_refused(api.client.post(f"/v1/unsubscribe/{forged}"), 422, "token")
    assert_refused(api.client.get(f"/v1/unsubscribe/{forged}"), 422, "token")
    old = make_token(SIGNING_KEY, patient_id=patient_id, now=api.app.clock.now() - timedelta(days=90))
    assert_refused(api.client.post(f"/v1/unsubscribe/{old}"), 422, "token")
    assert_refused(api.client.post("/v1/unsubscribe/not-a-token"), 422, "token")
    assert _consent(api, patient_id) == {}


def test_a_validly_signed_token_may_only_do_what_a_link_is_for(api: Api) -> None:
    """The signature proves we minted a payload, not that a link may carry it: only marketing email, and a
    payload of the wrong shape is a 4xx naming the token, never a 500."""
    patient_id = create_patient(api.app)
    exp = int((api.app.clock.now() + timedelta(days=1)).timestamp())
    link = {"p": patient_id, "ch": "email", "c": "marketing", "exp": exp}
    payloads: list[object] = [
        {**link, "c": "account_notice"},  # required notices can never be switched off
        {**link, "c": "care_team_message"},
        {**link, "ch": "sms"},
        {**link, "ch": "push", "c": "marketing"},
        {k: v for k, v in link.items() if k != "exp"},  # no expiry: would be valid forever
        {k: v for k, v in link.items() if k != "p"},
        {**link, "exp": str(exp)},
        {**link, "exp": 1e400},
        {**link, "p": True},
        {**link, "p": 2**70},
        [patient_id, "email", "marketing", exp],  # not an object
        "unsubscribe",
        None,
    ]
    for payload in payloads:
        token = sign_payload(SIGNING_KEY, payload)
        for method in (api.client.get, api.client.post):
            body = assert_refused(method(f"/v1/unsubscribe/{token}"), 422, "token")
            assert str(patient_id) not in str(body["message"])
    assert _consent(api, patient_id) == {}
    assert api.client.post(f"/v1/unsubscribe/{sign_payload(SIGNING_KEY, link)}").status_code == 200
    assert _consent(api, patient_id) == {("email", "marketing"): False}
