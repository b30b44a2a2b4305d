"""``/docs`` and ``/redoc`` work offline: every script, style and icon they load is served by the app itself."""

from __future__ import annotations

import re

import pytest

from tests.web.conftest import Api

#: What a page loads: src= and href= attributes, and the schema URL Swagger UI / ReDoc fetch.
_REFERENCES = re.compile(r"""(?:src|href|spec-url)=["']([^"']+)["']|\burl: *["']([^"']+)["']""")


@pytest.mark.parametrize(("page", "script"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")])
def test_docs_pages_load_only_what_the_app_serves(api: Api, page: str, script: str) -> None:
    html = api.client.get(page)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    # Nothing from elsewhere: no CDN, no web fonts (a network without them shows a blank page).
    assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", html.text, re.IGNORECASE), html.text
    references = {a or b for a, b in _REFERENCES.findall(html.text)}
    assert any(ref.endswith(script) for ref in references), references
    assert "/openapi.json" in references, references
    for ref in references:
        assert ref.startswith("/"), ref
        asset = api.client.get(ref)
        assert asset.status_code == 200, ref
        assert len(asset.content) > 100, ref
        kind = asset.headers["content-type"]
        expected = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}
        assert expected[ref[ref.rfind(".") :]] in kind, (ref, kind)
    assert api.client.get("/openapi.json").json()["openapi"].startswith("3.1")  # which Swagger UI 5 renders


def test_assets_outside_the_bundle_are_not_served(api: Api) -> None:
    assert api.client.get("/docs-assets/../../worker/settings.py").status_code == 404
    assert api.client.get("/docs-assets/nothing.js").status_code == 404
