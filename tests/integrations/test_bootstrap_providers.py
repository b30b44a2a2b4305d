"""The composition root builds real adapters from settings + environment secrets, and names what is missing."""

from __future__ import annotations

import pytest

from integrations.apns import ApnsProvider
from integrations.fcm import FcmProvider
from integrations.sendgrid import SendGridEmailProvider
from integrations.twilio import TwilioSmsProvider
from worker.bootstrap import build_providers
from worker.categories import Channel
from worker.errors import ConfigError
from worker.settings import load_settings

PROVIDERS = {"push": ["fcm", "apns"], "sms": ["twilio", "console"], "email": ["sendgrid"]}
PROVIDER_CFG = {
    "apns_key_id": "K",
    "apns_team_id": "T",
    "apns_topic": "com.partum.app",
    "twilio_account_sid": "AC1",
    "twilio_messaging_service_sid": "MG1",
    "sendgrid_from_email": "care@partum.example",
}


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch, service_account_json: str, ec_private_pem: str) -> None:
    monkeypatch.setenv("CARENOTIFY_FCM_SERVICE_ACCOUNT_JSON", service_account_json)
    monkeypatch.setenv("CARENOTIFY_APNS_PRIVATE_KEY", ec_private_pem)
    monkeypatch.setenv("CARENOTIFY_TWILIO_AUTH_TOKEN", "tok")
    monkeypatch.setenv("CARENOTIFY_SENDGRID_API_KEY", "SG.k")


def test_failover_order_and_adapters_from_settings(secrets: None) -> None:
    registry = build_providers(load_settings(providers=PROVIDERS, provider=PROVIDER_CFG))
    assert [type(p) for p in registry[Channel.PUSH]] == [FcmProvider, ApnsProvider]
    assert isinstance(registry[Channel.SMS][0], TwilioSmsProvider) and registry[Channel.SMS][1].name == "console"
    assert isinstance(registry[Channel.EMAIL][0], SendGridEmailProvider)


def test_missing_secret_is_named(secrets: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARENOTIFY_TWILIO_AUTH_TOKEN")
    with pytest.raises(ConfigError, match="CARENOTIFY_TWILIO_AUTH_TOKEN"):
        build_providers(load_settings(providers=PROVIDERS, provider=PROVIDER_CFG))


def test_missing_setting_is_named(secrets: None) -> None:
    cfg = {k: v for k, v in PROVIDER_CFG.items() if k != "apns_topic"}
    with pytest.raises(ConfigError, match="CARENOTIFY_PROVIDER__APNS_TOPIC"):
        build_providers(load_settings(providers=PROVIDERS, provider=cfg))


def test_provider_on_the_wrong_channel_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown provider 'twilio' for channel 'push'"):
        build_providers(load_settings(providers={"push": ["twilio"]}))
