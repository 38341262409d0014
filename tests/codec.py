"""The codec server as tests reach it: a real HTTP server on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import httpx
import uvicorn
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from starters.codec_server import create_app
from starters.devstack.processes import free_port
from workers.converter import EncryptionCodec

UI_ORIGIN = "http://localhost:8233"
STARTUP_SECONDS_MAX = 10.0


def body(payloads: Sequence[Payload]) -> str:
    return json_format.MessageToJson(Payloads(payloads=list(payloads)))


def payloads_of(response: httpx.Response) -> list[Payload]:
    return list(json_format.Parse(response.text, Payloads()).payloads)


@contextlib.asynccontextmanager
async def codec_server(codec: EncryptionCodec, token: str) -> AsyncIterator[httpx.AsyncClient]:
    """The codec server app served by uvicorn on a free port; a client that sends its token."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(codec, [UI_ORIGIN], token),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
        )
    )
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        async with asyncio.timeout(STARTUP_SECONDS_MAX):
            while not server.started:
                if task.done():
                    task.result()  # raises what stopped it
                await asyncio.sleep(0.01)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ) as http:
            yield http
    finally:
        server.should_exit = True
        await task
