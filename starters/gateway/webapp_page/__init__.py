"""The Telegram WebApp's page, served by the gateway at `/webapp/`: static
HTML, JavaScript and CSS (`static/`), with nothing loaded from elsewhere, so
it works with no network but the gateway's and the issuer's.

The page reads its initData from Telegram (`Telegram.WebApp.initData`, or the
`tgWebAppData` launch parameter in the URL's hash) and calls `/webapp/v1`
with it (starters/gateway/webapp.py). Its Content-Security-Policy lets it run
its own script only and talk to two places: the gateway, and the issuer, from
which it fetches a card's number with a single-use token, so the number never
passes through cardflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response

from schemas.money import MINOR_UNIT_EXPONENT
from schemas.providers import ISSUER
from starters.gateway.state import settings_of

PAGE_PATH = "/webapp/"
STATIC_DIRECTORY = Path(__file__).resolve().parent / "static"
# Where index.html takes each currency's minor-unit exponent, so the page
# formats amounts by the same table as everything else.
EXPONENTS_PLACEHOLDER = "{{MINOR_UNIT_EXPONENTS}}"
# Browsers ask again each time (an ETag would save little on three small files),
# so a new release's page never runs with the old one's script.
CACHE_CONTROL = "no-cache"

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str


@cache
def assets() -> dict[str, Asset]:
    """The page's files, read once: the HTML with the currencies' exponents in."""
    exponents = json.dumps({currency.value: e for currency, e in MINOR_UNIT_EXPONENT.items()})
    html = (STATIC_DIRECTORY / "index.html").read_text(encoding="utf-8")
    assert EXPONENTS_PLACEHOLDER in html, "index.html has no place for the exponents"
    return {
        "index.html": Asset(
            html.replace(EXPONENTS_PLACEHOLDER, exponents).encode(), "text/html; charset=utf-8"
        ),
        "app.js": Asset(
            (STATIC_DIRECTORY / "app.js").read_bytes(), "text/javascript; charset=utf-8"
        ),
        "app.css": Asset((STATIC_DIRECTORY / "app.css").read_bytes(), "text/css; charset=utf-8"),
    }


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(issuer_url: str) -> str:
    """The page runs its own script and style only, and talks to the gateway
    and the issuer (`issuer_url`'s origin) only."""
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src 'self' {_origin(issuer_url)}",
            "base-uri 'none'",
            "form-action 'none'",
        )
    )


def _served(name: str, headers: dict[str, str] | None = None) -> Response:
    asset = assets()[name]
    return Response(
        asset.body,
        media_type=asset.media_type,
        headers={
            "Cache-Control": CACHE_CONTROL,
            "X-Content-Type-Options": "nosniff",
            **(headers or {}),
        },
    )


@router.get(PAGE_PATH)
async def page(request: Request) -> Response:
    issuer_url = f"{settings_of(request.app).providers_base_url}/{ISSUER}"
    return _served(
        "index.html",
        {
            "Content-Security-Policy": content_security_policy(issuer_url),
            # The page's URL carries initData in its hash; nothing it loads needs it.
            "Referrer-Policy": "no-referrer",
        },
    )


@router.get(f"{PAGE_PATH}app.js")
async def script() -> Response:
    return _served("app.js")


@router.get(f"{PAGE_PATH}app.css")
async def style() -> Response:
    return _served("app.css")
