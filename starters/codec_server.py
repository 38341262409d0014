"""Temporal's remote codec endpoints, so operators read decoded payloads in the Web UI.

POST /encode and POST /decode take and return `{"payloads": [...]}` in
protobuf JSON, exactly as the Web UI and `temporal` CLI send them.

Whoever reaches these endpoints can decrypt payloads, so both require the
codec token (CARDFLOW_CODEC_TOKEN), sent either way:
- `Authorization: Bearer <token>`: the `temporal` CLI (`--codec-endpoint URL
  --codec-auth "Bearer <token>"`), scripts;
- as a path prefix, `/t/<token>/decode`: the Web UI, which sends no custom
  header to a codec endpoint, is given `http://host:port/t/<token>` (see
  `workers.secrets.codec_ui_endpoint`); that URL is a secret.
/decode decrypts encrypted payloads and shows plaintext ones (the SDK's own
markers are json/plain) as they are; /encode takes plaintext payloads only.
A payload that is neither (no or an unknown encoding, a ciphertext cut short
or forged, an unknown key id) is answered 400 naming what is wrong, never 500.
What /encode returns is what workers accept: they refuse payloads that are not
encrypted (workers.converter), so the Web UI's signals and updates reach them
through here.
A request with an `Origin` header outside the configured Web UI origins is
refused (403) whatever it carries: CORS alone only keeps a browser from
reading the answer, not the server from decrypting. `/health` stays open and
tells key ids only. No access log is written: the path may hold the token.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Sequence

import typer
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payload, Payloads

from starters import console
from workers.converter import (
    EncryptionCodec,
    MalformedPayloadError,
    UnknownEncryptionKeyError,
    check_plain_encoding,
    load_keys,
)
from workers.secrets import codec_token
from workers.settings import Settings

# The UI batches payloads per page; a request beyond this is not from the UI.
REQUEST_BYTES_MAX = 4 * 1024 * 1024
# The same answer for a missing and a wrong token: it tells nothing about either.
UNAUTHORIZED_MESSAGE = (
    "the codec server needs its token: Authorization: Bearer <token>, or the /t/<token>/ prefix"
)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _presented_token(request: Request) -> str | None:
    path_token = request.path_params.get("token")
    if isinstance(path_token, str):
        return path_token
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return credential.strip()
    return None


def create_app(codec: EncryptionCodec, allowed_origins: Sequence[str], token: str) -> Starlette:
    """The codec endpoints, answering `token` holders from `allowed_origins` (or no Origin)."""
    # An empty token would let every request in.
    assert token, "the codec server needs a token"
    expected = token.encode()
    origins = frozenset(allowed_origins)

    def refusal(request: Request) -> Response | None:
        presented = _presented_token(request)
        if presented is None or not hmac.compare_digest(presented.encode(), expected):
            return _error(401, UNAUTHORIZED_MESSAGE)
        origin = request.headers.get("origin")
        if origin is not None and origin not in origins:
            return _error(403, f"origin {origin} may not use this codec server")
        return None

    async def transform(
        request: Request, operation: Callable[[Sequence[Payload]], Awaitable[list[Payload]]]
    ) -> Response:
        refused = refusal(request)
        if refused is not None:
            return refused
        body = await request.body()
        if len(body) > REQUEST_BYTES_MAX:
            return _error(413, f"request larger than {REQUEST_BYTES_MAX} bytes")
        try:
            payloads = json_format.Parse(body, Payloads())
        except (json_format.ParseError, UnicodeDecodeError) as error:
            return _error(400, f'body must be {{"payloads": [...]}} in protobuf JSON: {error}')
        try:
            result = await operation(payloads.payloads)
        except (UnknownEncryptionKeyError, MalformedPayloadError) as error:
            return _error(400, str(error))
        return Response(
            json_format.MessageToJson(Payloads(payloads=result)),
            media_type="application/json",
        )

    async def seal(payloads: Sequence[Payload]) -> list[Payload]:
        # Only what a worker can read once decrypted; encrypting a ciphertext
        # again would hand it one it refuses.
        for payload in payloads:
            check_plain_encoding(payload)
        return await codec.encode(payloads)

    async def encode(request: Request) -> Response:
        return await transform(request, seal)

    async def decode(request: Request) -> Response:
        return await transform(request, codec.reveal)

    async def health(_: Request) -> Response:
        return Response(
            json.dumps({"status": "ok", "key_ids": codec.key_ids}), media_type="application/json"
        )

    return Starlette(
        routes=[
            Route("/encode", encode, methods=["POST"]),
            Route("/decode", decode, methods=["POST"]),
            Route("/t/{token}/encode", encode, methods=["POST"]),
            Route("/t/{token}/decode", decode, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=list(allowed_origins),
                allow_methods=["POST", "GET"],
                allow_headers=["content-type", "x-namespace", "authorization"],
                allow_credentials=True,
            )
        ],
    )


def app_from_settings(settings: Settings) -> Starlette:
    return create_app(
        EncryptionCodec(load_keys(settings)), settings.allowed_codec_origins, codec_token(settings)
    )


def serve(settings: Settings) -> None:
    """Run the codec server on CARDFLOW_CODEC_PORT until stopped; no access log (tokens)."""
    import uvicorn

    from starters.gateway.server import listener_config

    config = listener_config(
        app_from_settings(settings),
        settings,
        host=settings.bind_host,
        port=settings.codec_port,
        log_level="info",
        log_config=uvicorn.config.LOGGING_CONFIG,
    )
    uvicorn.Server(config).run()


# ----- `cardflow codec ...` ---------------------------------------------------

codec_app = typer.Typer(help="The codec server for the Temporal Web UI.", no_args_is_help=True)


@codec_app.command("serve")
def codec_serve() -> None:
    """Serve /encode and /decode for the Web UI (token required; see README)."""
    serve(console.settings())
