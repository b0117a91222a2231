"""/docs and /redoc load only the gateway's own copies of Swagger UI and ReDoc (no CDN)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from app.api import docs
from app.main import create_app

ASSET = re.compile(r'(?:href|src)="([^"]+)"')


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # No lifespan: these pages and the schema need no gateway.
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client


@pytest.mark.parametrize(
    ("page", "assets"),
    [
        ("/docs", {docs.SWAGGER_JS, docs.SWAGGER_CSS, docs.FAVICON}),
        ("/redoc", {docs.REDOC_JS, docs.FAVICON}),
    ],
)
async def test_pages_load_their_assets_from_the_gateway(
    http: httpx.AsyncClient, page: str, assets: set[str]
) -> None:
    response = await http.get(page)
    assert response.status_code == 200
    assert "http://" not in response.text
    assert "https://" not in response.text
    urls = set(ASSET.findall(response.text))
    assert urls == {f"{docs.STATIC_PATH}/{asset}" for asset in assets}
    for url in urls:
        asset = await http.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 0


async def test_docs_routes_stay_out_of_the_schema(http: httpx.AsyncClient) -> None:
    schema = (await http.get("/openapi.json")).json()
    assert not [path for path in schema["paths"] if path.startswith(("/docs", "/redoc"))]
    assert (await http.get("/docs/oauth2-redirect")).status_code == 404  # no OAuth here


def test_vendored_assets_are_small_and_licensed() -> None:
    files = [path for path in docs.STATIC_DIR.rglob("*") if path.is_file()]
    assert all(path.stat().st_size < 2 * 1024 * 1024 for path in files)
    for folder in ("swagger-ui", "redoc"):
        assert (docs.STATIC_DIR / folder / "LICENSE").is_file()
