"""``/docs`` and ``/redoc`` work offline: every asset the pages load is served by the gateway."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("page", "marker"), [("/docs", "SwaggerUIBundle"), ("/redoc", "<redoc spec-url")]
)
def test_every_asset_of_the_docs_pages_is_served_locally(
    stack: Stack, page: str, marker: str
) -> None:
    html = httpx.get(stack.url + page, timeout=10)
    assert html.status_code == 200 and marker in html.text
    assert "http://" not in html.text and "https://" not in html.text, "nothing from a CDN"
    assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert len(assets) >= 2, assets  # the bundle (and Swagger UI's CSS) and the favicon
    for asset in assets:
        assert asset.startswith("/"), asset
        served = httpx.get(stack.url + asset, timeout=10)
        assert served.status_code == 200 and len(served.content) > 1000, asset
    spec = re.search(r"(?:url: |spec-url=)['\"]([^'\"]+)['\"]", html.text)
    assert spec and httpx.get(stack.url + spec[1], timeout=10).json()["info"]["title"]
