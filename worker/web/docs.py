"""``/docs`` (Swagger UI) and ``/redoc`` with their scripts and styles served by the app itself, never a CDN.

FastAPI's own pages load Swagger UI from a CDN, so they are blank on a network without one (a hospital's, a
laptop offline). The assets here come from the ``fastapi-offline`` package (its ``static`` folder: Swagger UI
5, which renders OpenAPI 3.1 as FastAPI emits it, and ReDoc), following FastAPI's self-hosting recipe.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: Where the assets are served from.
ASSETS = "/docs-assets"


def install_docs(web: FastAPI) -> None:
    """Serve the docs pages and their assets; ``web`` must be built with ``docs_url=None, redoc_url=None``."""
    web.mount(ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")
    openapi_url = web.openapi_url or "/openapi.json"

    @web.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{web.title} - API",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            oauth2_redirect_url=None,  # API keys, no OAuth flow to come back from
            swagger_ui_parameters=web.swagger_ui_parameters,
        )

    @web.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{web.title} - API",
            redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
