"""``carenotify webhooks ...`` as a real process on the embedded default."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_cli import _run


def test_webhooks_commands(tmp_path: Path) -> None:
    added = _run(
        [
            "webhooks",
            "add",
            "https://platform.example.org/hooks",
            "--events",
            "notification.sent,consent.changed",
            "--ordered",
        ],
        tmp_path,
    )
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip()
    assert secret.startswith("whsec_") and "\n" not in secret  # alone on stdout: SECRET=$(carenotify webhooks add ...)
    assert "cannot be shown again" in added.stderr
    listed = _run(["webhooks", "list"], tmp_path)
    [endpoint] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert endpoint["events"] == ["consent.changed", "notification.sent"] and endpoint["ordered"] is True
    assert secret not in listed.stdout
    assert _run(["webhooks", "disable", "1"], tmp_path).stdout.strip() == "webhook endpoint 1 disabled"
    off = json.loads(_run(["webhooks", "list"], tmp_path).stdout)
    assert off["enabled"] is False and off["disabled_reason"] == "operator"
    assert _run(["webhooks", "enable", "1"], tmp_path).returncode == 0
    replayed = _run(["webhooks", "replay", "--since", "6h"], tmp_path)
    assert replayed.returncode == 0 and replayed.stdout.startswith("0 deliveries queued again"), replayed.stderr
    bad = _run(["webhooks", "add", "https://x.example.org", "--events", "notification.opened"], tmp_path)
    assert bad.returncode == 2 and "events: unknown event type(s) notification.opened" in bad.stderr
    bad_since = _run(["webhooks", "replay", "--since", "last week"], tmp_path)
    assert bad_since.returncode == 2 and "since:" in bad_since.stderr
    assert _run(["webhooks", "remove", "1"], tmp_path).returncode == 0
    missing = _run(["webhooks", "disable", "1"], tmp_path)
    assert missing.returncode == 2 and "no webhook endpoint 1" in missing.stderr
