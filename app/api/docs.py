"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served with their assets from the gateway.

FastAPI's own pages load Swagger UI and ReDoc from a public CDN, so on a network without internet
access they stay blank. These load the pinned copies in ``api/static/`` (see its README.md for
versions, licences and checksums) from ``/docs/static/``, and nothing from elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PATH = "/docs/static"
SWAGGER_JS = "swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui/swagger-ui.css"
REDOC_JS = "redoc/redoc.standalone.js"
FAVICON = "swagger-ui/favicon-32x32.png"

SWAGGER_UI_PARAMETERS: dict[str, Any] = {
    # Keep a credential entered under "Authorize" across reloads (in the browser's storage).
    "persistAuthorization": True,
    # Operations open ready to edit and execute; nothing is sent before "Execute".
    "tryItOutEnabled": True,
    "displayRequestDuration": True,
}


def install(app: FastAPI) -> None:
    """Serve the assets and register ``/docs`` and ``/redoc`` (neither in the OpenAPI schema).

    The app is built with ``docs_url=None, redoc_url=None`` so that FastAPI's CDN pages are not
    registered too.
    """
    openapi_url = app.openapi_url
    if openapi_url is None:
        return
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="docs-static")

    def prefix(request: Request) -> str:
        root_path: str = request.scope.get("root_path", "")
        return root_path.rstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_PATH}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{STATIC_PATH}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{STATIC_PATH}/{FAVICON}",
            oauth2_redirect_url=None,
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{STATIC_PATH}/{REDOC_JS}",
            redoc_favicon_url=f"{root}{STATIC_PATH}/{FAVICON}",
            with_google_fonts=False,
        )
