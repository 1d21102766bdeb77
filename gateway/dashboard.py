"""The live dashboard page of ``rtgw demo``: ``/`` (HTML), ``/rtgw.js`` (the JS client) and
``/demo/token``. DEMO ONLY: the page carries, and ``/demo/token`` hands out, a short-lived
development token to anyone who can reach the gateway, so ``rtgw serve`` never mounts it."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from gateway.demo import DEMO_USERS
from gateway.encoding import dumps_text
from gateway.settings import Settings
from gateway.tokens import mint_token
from gateway.transport.deps import SettingsDep

DEMO_TOKEN_TTL_S = 600
DEMO_SCOPES = ("orders:read",)

router = APIRouter(include_in_schema=False)


def _static(name: str) -> str:
    return resources.files("gateway").joinpath("static", name).read_text(encoding="utf-8")


def demo_token(settings: Settings) -> str:
    secret = settings.jwt_secret
    assert secret is not None, "the demo always has an HS256 secret"
    return mint_token(
        secret, DEMO_USERS[0], DEMO_SCOPES, DEMO_TOKEN_TTL_S,
        audience=settings.jwt_audience or "authenticated",
    )


@router.get("/")
async def page(settings: SettingsDep) -> HTMLResponse:
    config = dumps_text({"token": demo_token(settings)}).replace("</", "<\\/")
    tag = f'<script id="rtgw-config" type="application/json">{config}</script>'
    html = _static("index.html").replace("<!--RTGW_CONFIG-->", tag)
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@router.get("/rtgw.js")
async def client_js() -> Response:
    return Response(_static("rtgw.js"), media_type="text/javascript")


@router.get("/demo/token")
async def token(settings: SettingsDep) -> dict[str, str]:
    return {"token": demo_token(settings)}
