from __future__ import annotations

from pathlib import Path

import pytest

from worker.bootstrap import build_providers
from worker.errors import ConfigError
from worker.settings import load_settings


def test_defaults_come_from_settings_toml() -> None:
    settings = load_settings()
    assert settings.env == "embedded"
    assert settings.broker == "memory"
    assert settings.providers["push"] == ["console"]
    assert settings.delivery.max_attempts == 8


def test_environment_overrides_toml_including_nested(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARENOTIFY_DELIVERY__MAX_ATTEMPTS", "3")
    monkeypatch.setenv("CARENOTIFY_WORKER_THREADS", "2")
    settings = load_settings()
    assert settings.delivery.max_attempts == 3
    assert settings.worker_threads == 2
    assert settings.delivery.claim_lease_seconds == 6.0  # the rest of the table still comes from the file


def test_env_section_is_laid_over_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARENOTIFY_ENV", "production")
    settings = load_settings()
    assert settings.env == "production"
    assert settings.broker == "redis"
    assert settings.log_format == "json"
    assert settings.delivery.max_attempts == 8


def test_invalid_value_names_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARENOTIFY_DELIVERY__MAX_ATTEMPTS", "many")
    with pytest.raises(ConfigError, match="CARENOTIFY_DELIVERY__MAX_ATTEMPTS"):
        load_settings()


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ConfigError, match="CARENOTIFY_DEFAULT_TIME_ZONE.*unknown IANA time zone"):
        load_settings(default_time_zone="Mars/Olympus")


def test_unknown_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('[default]\nbrokr = "redis"\n')
    monkeypatch.setenv("CARENOTIFY_SETTINGS_FILE", str(path))
    with pytest.raises(ConfigError, match="BROKR"):
        load_settings()


def test_secret_in_settings_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('[default]\ntwilio_auth_token = "abc"\n')
    monkeypatch.setenv("CARENOTIFY_SETTINGS_FILE", str(path))
    with pytest.raises(ConfigError, match="CARENOTIFY_TWILIO_AUTH_TOKEN") as info:
        load_settings()
    assert "abc" not in str(info.value)


def test_secret_from_environment_and_missing_secret_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARENOTIFY_SENDGRID_API_KEY", "SG.secret")
    settings = load_settings()
    assert settings.require_secret("sendgrid_api_key") == "SG.secret"
    assert "SG.secret" not in repr(settings)
    with pytest.raises(ConfigError, match="CARENOTIFY_TWILIO_AUTH_TOKEN"):
        settings.require_secret("twilio_auth_token")


def test_unknown_provider_or_channel_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown provider 'pigeon'"):
        build_providers(load_settings(providers={"push": ["pigeon"]}))
    with pytest.raises(ConfigError, match="unknown channel 'fax'"):
        load_settings(providers={"fax": ["console"]})


def test_bad_database_url_does_not_echo_credentials() -> None:
    from worker.db import make_engine

    with pytest.raises(ConfigError, match="CARENOTIFY_DATABASE_URL") as info:
        make_engine("::not a url:: hunter2")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("toml", "variable"),
    [
        # A table that is not the active one is still committed to the repository.
        ('[default]\nenv = "embedded"\n[staging]\ntwilio_auth_token = "hunter2"\n', "CARENOTIFY_TWILIO_AUTH_TOKEN"),
        ('signing_key = "hunter2"\n[default]\nenv = "embedded"\n', "CARENOTIFY_SIGNING_KEY"),
        ('[default.provider]\nsendgrid_api_key = "hunter2"\n', "CARENOTIFY_PROVIDER__SENDGRID_API_KEY"),
        # A password inside a URL is a secret too, in any table.
        ('[default]\ndatabase_url = "postgresql+psycopg://app:hunter2@db:5432/cn"\n', "CARENOTIFY_DATABASE_URL"),
        ('[production]\nredis_url = "redis://:hunter2@cache:6379/0"\n', "CARENOTIFY_REDIS_URL"),
        ('[staging.provider]\ninapp_url = "https://svc:hunter2@inapp.example/v1"\n', "CARENOTIFY_PROVIDER__INAPP_URL"),
    ],
)
def test_secrets_are_refused_in_every_table_and_inside_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, variable: str
) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(toml)
    monkeypatch.setenv("CARENOTIFY_SETTINGS_FILE", str(path))
    monkeypatch.delenv("CARENOTIFY_ENV", raising=False)
    with pytest.raises(ConfigError, match=variable) as info:
        load_settings()
    assert "hunter2" not in str(info.value)


def test_urls_without_passwords_and_the_shipped_file_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(
        '[default]\ndatabase_url = "postgresql+psycopg://carenotify@db:5432/cn"\n'
        '[staging]\nredis_url = "redis://cache:6379/0"\npublic_base_url = "https://notify.example"\n'
    )
    monkeypatch.setenv("CARENOTIFY_SETTINGS_FILE", str(path))
    monkeypatch.setenv("CARENOTIFY_ENV", "staging")
    assert load_settings().redis_url == "redis://cache:6379/0"
    monkeypatch.delenv("CARENOTIFY_SETTINGS_FILE")
    for env in ("embedded", "production"):
        monkeypatch.setenv("CARENOTIFY_ENV", env)
        assert load_settings().env == env
    # The environment is where a URL's password belongs.
    monkeypatch.setenv("CARENOTIFY_DATABASE_URL", "postgresql+psycopg://app:from-env@db:5432/cn")
    assert load_settings().database_url.endswith("@db:5432/cn")


@pytest.mark.parametrize("zone", ["localtime", "Factory", "posix/America/New_York", "right/UTC", "Mars/Olympus"])
def test_default_time_zone_must_be_a_places_zone(zone: str) -> None:
    with pytest.raises(ConfigError, match="DEFAULT_TIME_ZONE"):
        load_settings(default_time_zone=zone)


def test_the_retired_webhook_purge_knobs_still_load_with_a_warning_naming_them() -> None:
    """The webhooks' own purge job is part of the retention job now: a settings file that still sets its two
    knobs loads (extra keys are otherwise refused), and the operator is told they no longer do anything."""
    with pytest.warns(FutureWarning, match=r"webhooks\.retention_batch_size, webhooks\.retention_interval_seconds"):
        settings = load_settings(webhooks={"retention_interval_seconds": 60, "retention_batch_size": 10})
    assert settings.webhooks.retention_days == 14.0
    with pytest.raises(ConfigError, match="retention_intervall_seconds"):
        load_settings(webhooks={"retention_intervall_seconds": 60})
