"""Connecting to Temporal with cardflow's settings and data converter."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.service import TLSConfig

from workers.converter import data_converter_from_settings
from workers.interceptors import PostCloseQueryInterceptor
from workers.settings import Settings
from workers.telemetry import Telemetry, process_telemetry


class TemporalUnreachable(RuntimeError):
    """No connection to Temporal could be made (the server down, a wrong
    address, TLS refused)."""


def tls_config(settings: Settings) -> TLSConfig | bool:
    """mTLS when a client certificate is configured; plain TLS for an API key."""
    if settings.temporal_tls_cert is not None and settings.temporal_tls_key is not None:
        return TLSConfig(
            client_cert=settings.temporal_tls_cert.read_bytes(),
            client_private_key=settings.temporal_tls_key.read_bytes(),
            server_root_ca_cert=(
                settings.temporal_tls_ca.read_bytes() if settings.temporal_tls_ca else None
            ),
            domain=settings.temporal_tls_server_name,
        )
    if settings.temporal_api_key is not None:
        return True
    return False


async def connect(
    settings: Settings, *, identity: str | None = None, telemetry: Telemetry | None = None
) -> Client:
    """A client for the configured namespace, with the encrypting data converter.

    With `telemetry`, the client (and every worker built on it) reports
    metrics through its runtime and traces through its interceptors; without
    it, a client still traces when an OTLP endpoint is configured.
    """
    if telemetry is None and settings.otlp_endpoint is not None:
        # A starter's client: its trace begins at the command.
        telemetry = process_telemetry(settings)
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    try:
        return await Client.connect(
            settings.temporal_target,
            namespace=settings.temporal_namespace,
            data_converter=data_converter_from_settings(settings),
            tls=tls_config(settings),
            api_key=api_key,
            identity=identity,
            runtime=telemetry.runtime if telemetry is not None else None,
            interceptors=[
                PostCloseQueryInterceptor(),
                *(telemetry.interceptors if telemetry is not None else ()),
            ],
        )
    except RuntimeError as error:  # the SDK's "Failed client connect: ..."
        raise TemporalUnreachable(
            f"cannot reach Temporal at {settings.temporal_target}: {error}"
        ) from error
