"""Temporal's remote codec endpoints, so operators read decoded payloads in the Web UI.

POST /encode and POST /decode take and return `{"payloads": [...]}` in
protobuf JSON, exactly as the Web UI and `temporal` CLI send them. CORS admits
only the configured Web UI origins.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payload, Payloads

from workers.converter import EncryptionCodec, PayloadDecryptionError, UnknownEncryptionKeyError

# The UI batches payloads per page; a request beyond this is not from the UI.
REQUEST_BYTES_MAX = 4 * 1024 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(codec: EncryptionCodec, allowed_origins: Sequence[str]) -> Starlette:
    async def transform(
        request: Request, operation: Callable[[Sequence[Payload]], Awaitable[list[Payload]]]
    ) -> Response:
        body = await request.body()
        if len(body) > REQUEST_BYTES_MAX:
            return _error(413, f"request larger than {REQUEST_BYTES_MAX} bytes")
        try:
            payloads = json_format.Parse(body, Payloads())
        except (json_format.ParseError, UnicodeDecodeError) as error:
            return _error(400, f'body must be {{"payloads": [...]}} in protobuf JSON: {error}')
        try:
            result = await operation(payloads.payloads)
        except (UnknownEncryptionKeyError, PayloadDecryptionError) as error:
            return _error(400, str(error))
        return Response(
            json_format.MessageToJson(Payloads(payloads=result)),
            media_type="application/json",
        )

    async def encode(request: Request) -> Response:
        return await transform(request, codec.encode)

    async def decode(request: Request) -> Response:
        return await transform(request, codec.decode)

    async def health(_: Request) -> Response:
        return Response(
            json.dumps({"status": "ok", "key_ids": codec.key_ids}), media_type="application/json"
        )

    return Starlette(
        routes=[
            Route("/encode", encode, methods=["POST"]),
            Route("/decode", decode, methods=["POST"]),
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
