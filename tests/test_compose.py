"""temporal-compose.yml, the production-like stack, checked by reading it.

No Docker engine is needed: the file is parsed, its `${VAR...}` references are
resolved the way Compose resolves them (with sample values for the variables
an operator must set), and every cardflow process's environment is validated
by the same `load_settings` the process runs at start, with the files bind-
mounted into its container where the container sees them. Temporal's mTLS
files are the ones `cardflow secrets temporal-certs` writes.

Each check is a function that raises AssertionError naming what is wrong. The
tests run every check on the real file, and run each check again on a copy of
the file broken on purpose, so a check that stopped checking fails too.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from schemas.providers import PROVIDERS
from schemas.search import ALL_SEARCH_ATTRIBUTES
from schemas.task_queues import QUEUE_KINDS
from starters.cli import app as cli_app
from workers import certificates
from workers.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_PATH = ROOT / "temporal-compose.yml"
DOCKERFILE_PATH = ROOT / "Dockerfile"

# What an operator exports before `docker compose up` (valid, made-up values).
SAMPLE_VARIABLES: dict[str, str] = {
    "CARDFLOW_ENCRYPTION_KEYS": "compose-test:" + base64.b64encode(bytes(range(32))).decode(),
    "CARDFLOW_WEBHOOK_SECRETS": json.dumps(
        {
            provider: "whsec_" + base64.b64encode(provider.encode() * 8).decode()
            for provider in PROVIDERS
        }
    ),
    "CARDFLOW_CODEC_TOKEN": "compose-test-codec-token-0123456789",
    "CARDFLOW_API_KEY_PEPPER": "compose-test-api-key-pepper-0123456789",
    # Written by the `certs` fixture with `cardflow secrets temporal-certs`.
    "CARDFLOW_TEMPORAL_CERTS_DIR": str(
        Path(tempfile.gettempdir()) / f"cardflow-compose-certs-{os.getpid()}"
    ),
    "CARDFLOW_GRAFANA_ADMIN_PASSWORD": "compose-test-grafana-password",
}
# Written beside the certificates by the `certs` fixture.
SAMPLE_VARIABLES["CARDFLOW_ALERT_WEBHOOK_URL_FILE"] = str(
    Path(SAMPLE_VARIABLES["CARDFLOW_TEMPORAL_CERTS_DIR"]) / "alert-webhook-url"
)
# Variables the file must refuse to start without (`${VAR:?message}`).
REQUIRED_VARIABLES = (
    "CARDFLOW_ENCRYPTION_KEYS",
    "CARDFLOW_WEBHOOK_SECRETS",
    "CARDFLOW_CODEC_TOKEN",
    "CARDFLOW_API_KEY_PEPPER",
    "CARDFLOW_ALERT_WEBHOOK_URL_FILE",
    "CARDFLOW_GRAFANA_ADMIN_PASSWORD",
)

# Environment variable names the project's settings own; any of these handed
# to a cardflow process must be one `workers.settings.Settings` reads.
SETTINGS_PREFIXES = ("CARDFLOW_", "TEMPORAL_", "OTEL_")
SETTINGS_NAMES = ("DATABASE_URL",)
SETTING_ALIASES: frozenset[str] = frozenset(
    str(field.validation_alias) for field in Settings.model_fields.values()
)

DEPENDENCY_CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")
# An exact release: 16.9, 1.28.1, 1.28.1-tctl-1.18.4-cli-1.4.1, 3.11.13-slim-bookworm.
PINNED_TAG = re.compile(r"^v?\d+\.\d+(\.\d+)*([-+._][A-Za-z0-9._+-]+)?$")
REPLICAS_VARIABLE = re.compile(r"^\$\{(?P<name>[A-Z][A-Z0-9_]*):-(?P<default>[1-9]\d*)\}$")
TEMPORAL_SCHEMA_ROOT = "/etc/temporal/schema/postgresql/v12"


# ----- reading the file the way Compose does ---------------------------------

_REFERENCE = re.compile(
    r"\$\$"
    r"|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


class MissingVariable(Exception):
    """A `${VAR:?message}` reference whose variable is not set."""


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Resolve `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
    `${VAR:?error}`, `${VAR?error}` and `${VAR:+alternative}` as Compose does."""

    def resolve(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        value = variables.get(name)
        operator, argument = match.group("op"), match.group("arg") or ""
        if operator == ":-":
            return value if value else argument
        if operator == "-":
            return value if value is not None else argument
        if operator in (":?", "?"):
            if value is None or (operator == ":?" and not value):
                raise MissingVariable(f"{name}: {argument}")
            return value
        if operator in (":+", "+"):
            return argument if (value if operator == ":+" else value is not None) else ""
        return value or ""

    return _REFERENCE.sub(resolve, text)


def interpolate_document(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, dict):
        return {key: interpolate_document(value, variables) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_document(item, variables) for item in node]
    return node


@dataclass
class Stack:
    """The compose file as written (`raw`) and as Compose would run it."""

    raw: dict[str, Any]
    services: dict[str, dict[str, Any]]

    @classmethod
    def of(cls, raw: dict[str, Any], variables: Mapping[str, str] = SAMPLE_VARIABLES) -> Stack:
        resolved = interpolate_document(raw, variables)
        return cls(raw=raw, services=resolved["services"])

    def service(self, name: str) -> dict[str, Any]:
        assert name in self.services, f"no service {name!r}"
        return self.services[name]

    def with_image(self, prefix: str) -> dict[str, dict[str, Any]]:
        return {
            name: service
            for name, service in self.services.items()
            if str(service.get("image", "")).startswith(prefix)
        }

    def cardflow_services(self) -> dict[str, dict[str, Any]]:
        """Services that run the project's own image (and so read its settings)."""
        return {name: service for name, service in self.services.items() if is_cardflow(service)}

    def by_role(self, *role: str) -> dict[str, dict[str, Any]]:
        """Cardflow services whose command is `cardflow <role...>`."""
        return {
            name: service
            for name, service in self.cardflow_services().items()
            if tuple(command(service)[1 : 1 + len(role)]) == role
        }

    def one_by_role(self, *role: str) -> tuple[str, dict[str, Any]]:
        found = self.by_role(*role)
        assert len(found) == 1, (
            f"expected one `cardflow {' '.join(role)}` service, found {sorted(found)}"
        )
        return next(iter(found.items()))

    def workers_and_gateway(self) -> dict[str, dict[str, Any]]:
        return {**self.by_role("worker", "run"), **self.by_role("gateway")}


def load_stack() -> Stack:
    raw = yaml.safe_load(COMPOSE_PATH.read_text())
    assert isinstance(raw, dict) and isinstance(raw.get("services"), dict)
    return Stack.of(raw)


def is_cardflow(service: Mapping[str, Any]) -> bool:
    return "build" in service or str(service.get("image", "")).startswith("cardflow:")


def is_one_shot(service: Mapping[str, Any]) -> bool:
    return service.get("restart") == "no"


def command(service: Mapping[str, Any]) -> list[str]:
    value = service.get("command", [])
    return value.split() if isinstance(value, str) else [str(part) for part in value]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    value = service.get("environment") or {}
    if isinstance(value, list):
        pairs = (entry.partition("=") for entry in value)
        return {name: text for name, _, text in pairs}
    return {name: "" if text is None else str(text) for name, text in value.items()}


def script(service: Mapping[str, Any]) -> str:
    """The shell script a one-shot service runs (entrypoint + command)."""
    parts = service.get("entrypoint") or []
    parts = [parts] if isinstance(parts, str) else list(parts)
    return "\n".join(str(part) for part in [*parts, *command(service)])


def published_port(service: Mapping[str, Any], container_port: int) -> tuple[str, int]:
    """(host address, host port) the container port is published on."""
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            if int(entry["target"]) == container_port:
                return str(entry.get("host_ip", "0.0.0.0")), int(entry["published"])
            continue
        parts = str(entry).split("/")[0].split(":")
        if int(parts[-1]) == container_port and len(parts) >= 2:
            return (parts[0] if len(parts) == 3 else "0.0.0.0"), int(parts[-2])
    raise AssertionError(f"container port {container_port} is not published")


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    value = service.get("depends_on") or {}
    if isinstance(value, list):
        return {name: "service_started" for name in value}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in value.items()}


def healthcheck_test(service: Mapping[str, Any]) -> str:
    check = service.get("healthcheck") or {}
    if check.get("disable"):
        return ""
    test = check.get("test") or []
    if isinstance(test, str):
        return test
    if not test or test[0] == "NONE":
        return ""
    return " ".join(str(part) for part in test)


@contextmanager
def process_environment(variables: Mapping[str, str]) -> Iterator[None]:
    """os.environ holding exactly `variables` of the settings' names, as in a container."""
    saved = {name: os.environ.pop(name) for name in list(os.environ) if name in SETTING_ALIASES}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name in variables:
            os.environ.pop(name, None)
        os.environ.update(saved)


def bind_mounts(service: Mapping[str, Any]) -> dict[str, Path]:
    """Container path -> host path of each file or directory bind-mounted into the service."""
    mounts: dict[str, Path] = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            if entry.get("type") != "bind":
                continue
            source, target = str(entry["source"]), str(entry["target"])
        else:
            parts = str(entry).split(":")
            # A named volume's source is a bare name; a bind mount's is a path.
            if len(parts) < 2 or not parts[0].startswith(("/", ".", "~")):
                continue
            source, target = parts[0], parts[1]
        host = Path(source).expanduser()
        mounts[target] = host if host.is_absolute() else ROOT / host
    return mounts


def mounted_file(name: str, service: Mapping[str, Any], container_path: str) -> Path:
    """The host file a container path of the service is, asserting it is mounted and exists."""
    host = bind_mounts(service).get(container_path)
    assert host is not None, f"{name}: {container_path} is not mounted into the container"
    assert host.is_file(), f"{name}: {container_path} is mounted from {host}, which is no file"
    return host


def container_view(service: Mapping[str, Any]) -> dict[str, str]:
    """The service's environment, a mounted file's container path read as its host file."""
    mounts = bind_mounts(service)
    return {
        name: str(mounts[value]) if value in mounts else value
        for name, value in environment(service).items()
    }


def settings_of(service: Mapping[str, Any]) -> Settings:
    """The settings the service's process would load at start."""
    with process_environment(container_view(service)):
        return load_settings()


def host_and_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# ----- the checks --------------------------------------------------------------


def check_cardflow_variables_are_settings(stack: Stack) -> None:
    unknown = sorted(
        f"{name}: {variable}"
        for name, service in stack.cardflow_services().items()
        for variable in environment(service)
        if (variable.startswith(SETTINGS_PREFIXES) or variable in SETTINGS_NAMES)
        and variable not in SETTING_ALIASES
    )
    assert not unknown, f"variables no setting reads (workers/settings.py): {unknown}"


def check_cardflow_environments_load(stack: Stack) -> None:
    problems = []
    for name, service in stack.cardflow_services().items():
        try:
            settings_of(service)
        # SettingsError names the variable; pydantic-settings raises its own
        # error for a value it cannot even decode.
        except Exception as error:
            problems.append(f"{name}: {error}")
    assert not problems, "cardflow processes that would refuse to start:\n" + "\n".join(problems)


def check_required_variables_refuse_to_start(stack: Stack) -> None:
    for variable in REQUIRED_VARIABLES:
        without = {name: value for name, value in SAMPLE_VARIABLES.items() if name != variable}
        users = [
            name
            for name, service in stack.raw["services"].items()
            if "${" + variable in json.dumps(service)
        ]
        assert users, f"no service is given {variable}"
        for name in users:
            try:
                interpolate_document(stack.raw["services"][name], without)
            except MissingVariable as error:
                assert str(error).startswith(variable), error
                continue
            raise AssertionError(
                f"{name} would start without {variable} (use ${{{variable}:?...}})"
            )


def check_roles(stack: Stack) -> None:
    temporal_name, _ = only(stack.with_image("temporalio/server:"), "Temporal server")
    roles: list[tuple[str, ...]] = [("worker", "run", kind) for kind in QUEUE_KINDS]
    roles += [("gateway",), ("codec", "serve"), ("simulators", "serve"), ("schedules", "ensure")]
    for role in roles:
        stack.one_by_role(*role)
    simulators_name, simulators = stack.one_by_role("simulators", "serve")
    gateway_name, gateway = stack.one_by_role("gateway")
    keys = {
        environment(service).get("CARDFLOW_ENCRYPTION_KEYS")
        for service in stack.cardflow_services().values()
    }
    assert len(keys - {None}) == 1, "every cardflow process must get the same encryption keys"

    for name, service in stack.workers_and_gateway().items():
        variables = environment(service)
        for required in ("TEMPORAL_ADDRESS", "DATABASE_URL", "CARDFLOW_ENCRYPTION_KEYS"):
            assert variables.get(required), f"{name} needs {required}"
        settings = settings_of(service)
        host, port = host_and_port(settings.temporal_target)
        assert (host, port) == (temporal_name, 7233), f"{name}: TEMPORAL_ADDRESS is not the server"
        check_database_url(stack, name, settings.effective_database_url)
        providers = urlsplit(settings.providers_base_url)
        assert providers.hostname == simulators_name, f"{name}: providers are not the simulators"
        assert providers.port == settings_of(simulators).simulators_port, f"{name}: providers port"
        assert depends_on(service).get(temporal_name) == "service_healthy", (
            f"{name} must wait for {temporal_name} to be healthy"
        )

    gateway_url = urlsplit(settings_of(simulators).gateway_base_url)
    assert gateway_url.hostname == gateway_name, "simulators deliver webhooks elsewhere"
    assert gateway_url.port == settings_of(gateway).gateway_port, (
        "simulators use another gateway port"
    )
    assert (
        environment(simulators)["CARDFLOW_WEBHOOK_SECRETS"]
        == environment(gateway)["CARDFLOW_WEBHOOK_SECRETS"]
    ), "the gateway must verify with the secrets the simulators sign with"


def check_database_url(stack: Stack, name: str, url: str) -> None:
    parts = urlsplit(url)
    assert parts.hostname in stack.services, f"{name}: DATABASE_URL host is not a service"
    database = environment(stack.services[parts.hostname])
    assert str(stack.services[parts.hostname].get("image", "")).startswith("postgres:")
    assert (parts.username, parts.password, parts.path.lstrip("/")) == (
        database.get("POSTGRES_USER"),
        database.get("POSTGRES_PASSWORD"),
        database.get("POSTGRES_DB", database.get("POSTGRES_USER")),
    ), f"{name}: DATABASE_URL does not match {parts.hostname}'s user, password and database"


def check_codec_and_web_ui(stack: Stack) -> None:
    ui_name, ui = only(stack.with_image("temporalio/ui:"), "Web UI")
    codec_name, codec = stack.one_by_role("codec", "serve")
    ui_variables = environment(ui)
    ui_host, ui_port = published_port(ui, int(ui_variables.get("TEMPORAL_UI_PORT", "8080")))
    ui_origin = f"http://localhost:{ui_port}"

    settings = settings_of(codec)
    assert environment(codec).get("CARDFLOW_ENCRYPTION_KEYS"), "the codec needs the keys"
    assert settings.codec_cors_origins == [ui_origin], (
        f"{codec_name} must allow exactly the Web UI's origin {ui_origin}, "
        f"allows {settings.codec_cors_origins}"
    )
    codec_host, codec_port = published_port(codec, settings.codec_port)
    assert settings.bind_host == "0.0.0.0", "the codec must listen beyond its container's loopback"
    # Whoever reaches the codec can decrypt payloads.
    assert codec_host == "127.0.0.1", f"{codec_name} must be published on loopback only"
    codec_address = f"http://localhost:{codec_port}"
    assert settings.codec_token is not None, f"{codec_name} needs CARDFLOW_CODEC_TOKEN"
    # The UI sends no header to its codec: the token is the endpoint's path prefix.
    token_address = f"{codec_address}/t/{settings.codec_token.get_secret_value()}"
    assert ui_variables.get("TEMPORAL_CODEC_ENDPOINT") == token_address, (
        f"{ui_name}'s TEMPORAL_CODEC_ENDPOINT must be the codec as published with its token"
    )
    assert settings.codec_url == codec_address, (
        "CARDFLOW_CODEC_URL differs from the published codec"
    )
    assert ui_origin in ui_variables.get("TEMPORAL_CORS_ORIGINS", "").split(",")
    temporal_name, _ = only(stack.with_image("temporalio/server:"), "Temporal server")
    assert ui_variables.get("TEMPORAL_ADDRESS") == f"{temporal_name}:7233"
    assert ui_host == "127.0.0.1", f"{ui_name} must be published on loopback only"


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def check_pair(name: str, certificate_path: Path, key_path: Path) -> x509.Certificate:
    """The certificate, asserting the key is its own."""
    loaded = certificate(certificate_path)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == loaded.public_key(), (
        f"{name}: {key_path.name} is not the key of {certificate_path.name}"
    )
    return loaded


def check_issued_by(name: str, leaf: x509.Certificate, authority: x509.Certificate) -> None:
    try:
        leaf.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature) as error:
        raise AssertionError(f"{name}: its certificate is not issued by the trusted CA") from error


def extended_usages(leaf: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def dns_names(leaf: x509.Certificate) -> list[str]:
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(names.get_values_for_type(x509.DNSName))


@dataclass
class Frontend:
    """What Temporal's frontend demands of its clients."""

    name: str
    client_authority: x509.Certificate
    server_name: str
    server_authority_path: Path


def temporal_frontend(stack: Stack) -> Frontend:
    """The server's mTLS, checked: client certificates required, its own pair valid."""
    name, server = only(stack.with_image("temporalio/server:"), "Temporal server")
    variables = environment(server)
    assert variables.get("TEMPORAL_TLS_REQUIRE_CLIENT_AUTH") == "true", (
        f"{name}: the frontend must require client certificates (TEMPORAL_TLS_REQUIRE_CLIENT_AUTH)"
    )

    def mounted(variable: str) -> Path:
        assert variables.get(variable), f"{name} needs {variable}"
        return mounted_file(name, server, variables[variable])

    client_authority = certificate(mounted("TEMPORAL_TLS_CLIENT1_CA_CERT"))
    server_authority_path = mounted("TEMPORAL_TLS_SERVER_CA_CERT")
    server_authority = certificate(server_authority_path)
    server_name = variables.get("TEMPORAL_TLS_FRONTEND_SERVER_NAME", "")
    for role in ("FRONTEND", "SERVER"):
        leaf = check_pair(
            f"{name} {role.lower()}",
            mounted(f"TEMPORAL_TLS_{role}_CERT"),
            mounted(f"TEMPORAL_TLS_{role}_KEY"),
        )
        check_issued_by(f"{name} {role.lower()}", leaf, server_authority)
        assert ExtendedKeyUsageOID.SERVER_AUTH in extended_usages(leaf)
        for variable in ("TEMPORAL_TLS_FRONTEND_SERVER_NAME", "TEMPORAL_TLS_INTERNODE_SERVER_NAME"):
            assert variables.get(variable) in dns_names(leaf), (
                f"{name}: its certificate is not for {variable}={variables.get(variable)}"
            )
    # The server's certificate is its client one too (system worker, health check).
    internode = certificate(mounted("TEMPORAL_TLS_SERVER_CERT"))
    assert ExtendedKeyUsageOID.CLIENT_AUTH in extended_usages(internode)
    check_issued_by(f"{name} internode", internode, client_authority)
    return Frontend(name, client_authority, server_name, server_authority_path)


def check_client_certificate(
    frontend: Frontend,
    name: str,
    service: Mapping[str, Any],
    paths: tuple[str | None, str | None, str | None],
    server_name: str | None,
) -> None:
    """A client's (certificate, key, CA) container paths present a valid identity."""
    cert_path, key_path, ca_path = paths
    assert cert_path and key_path, f"{name} presents no client certificate to {frontend.name}"
    assert ca_path, f"{name} must verify {frontend.name} by its CA"
    leaf = check_pair(
        name, mounted_file(name, service, cert_path), mounted_file(name, service, key_path)
    )
    check_issued_by(name, leaf, frontend.client_authority)
    assert ExtendedKeyUsageOID.CLIENT_AUTH in extended_usages(leaf), f"{name}: not a client cert"
    trusted = mounted_file(name, service, ca_path)
    assert trusted.read_bytes() == frontend.server_authority_path.read_bytes(), (
        f"{name} trusts another CA than the one that signed {frontend.name}'s certificate"
    )
    assert server_name == frontend.server_name, (
        f"{name} verifies the server as {server_name!r}, its certificate is for "
        f"{frontend.server_name!r}"
    )


TLS_FLAGS = ("--tls-ca-path", "--tls-cert-path", "--tls-key-path", "--tls-server-name")


def cli_tls_flags(text: str) -> dict[str, str]:
    """The `temporal` CLI's TLS flags and their (unquoted) values in a command line."""
    return {
        flag: value.strip("\"'")
        for flag, value in re.findall(r"(--tls-[a-z-]+)[ =](\S+)", text)
        if flag in TLS_FLAGS
    }


def check_temporal_requires_mtls(stack: Stack) -> None:
    frontend = temporal_frontend(stack)
    # cardflow's own processes that talk to Temporal (settings: TEMPORAL_TLS_*).
    clients = {
        name: service
        for name, service in stack.cardflow_services().items()
        if environment(service).get("TEMPORAL_ADDRESS")
    }
    assert set(stack.workers_and_gateway()) | set(stack.by_role("schedules")) <= set(clients)
    for name, service in clients.items():
        variables = environment(service)
        check_client_certificate(
            frontend,
            name,
            service,
            (
                variables.get("TEMPORAL_TLS_CERT"),
                variables.get("TEMPORAL_TLS_KEY"),
                variables.get("TEMPORAL_TLS_CA"),
            ),
            variables.get("TEMPORAL_TLS_SERVER_NAME"),
        )
    # The Web UI's server.
    ui_name, ui = only(stack.with_image("temporalio/ui:"), "Web UI")
    ui_variables = environment(ui)
    assert ui_variables.get("TEMPORAL_TLS_ENABLE_HOST_VERIFICATION") == "true", (
        f"{ui_name} must verify the server's name"
    )
    check_client_certificate(
        frontend,
        ui_name,
        ui,
        (
            ui_variables.get("TEMPORAL_TLS_CERT"),
            ui_variables.get("TEMPORAL_TLS_KEY"),
            ui_variables.get("TEMPORAL_TLS_CA"),
        ),
        ui_variables.get("TEMPORAL_TLS_SERVER_NAME"),
    )
    # The admin tools' `temporal` CLI: every call passes the flags.
    for name, service in stack.with_image("temporalio/admin-tools:").items():
        text = script(service)
        if "temporal operator" not in text:
            continue
        variables = environment(service)
        flags = cli_tls_flags(text)
        assert set(flags) == set(TLS_FLAGS), f"{name}'s temporal CLI must pass {TLS_FLAGS}"
        # The flags name variables of the service's environment.
        resolved = {
            flag: variables.get(value.removeprefix("$").strip("{}"), value)
            for flag, value in flags.items()
        }
        assert re.search(r"^\s*temporal\(\) \{\s*$", text, re.MULTILINE), (
            f"{name} must wrap every temporal call with the TLS flags"
        )
        check_client_certificate(
            frontend,
            name,
            service,
            (
                resolved["--tls-cert-path"],
                resolved["--tls-key-path"],
                resolved["--tls-ca-path"],
            ),
            resolved["--tls-server-name"],
        )
    # The server's own health check connects as a client too.
    server = stack.service(frontend.name)
    flags = cli_tls_flags(healthcheck_test(server))
    assert set(flags) == set(TLS_FLAGS), f"{frontend.name}'s health check must pass {TLS_FLAGS}"
    check_client_certificate(
        frontend,
        f"{frontend.name} health check",
        server,
        (flags["--tls-cert-path"], flags["--tls-key-path"], flags["--tls-ca-path"]),
        flags["--tls-server-name"],
    )
    assert published_port(server, 7233)[0] == "127.0.0.1", (
        f"{frontend.name} must be published on loopback only"
    )


def check_images_are_pinned(stack: Stack) -> None:
    loose = []
    for name, service in stack.services.items():
        image = str(service.get("image", ""))
        if is_cardflow(service):
            assert "build" in service, f"{name} runs the project image without building it"
            continue
        reference, _, digest = image.partition("@")
        tag = reference.rpartition(":")[2] if ":" in reference.rpartition("/")[2] else ""
        if not (digest.startswith("sha256:") or PINNED_TAG.match(tag)):
            loose.append(f"{name}: {image}")
    for line in DOCKERFILE_PATH.read_text().splitlines():
        if line.upper().startswith("FROM "):
            image = line.split()[1]
            if not PINNED_TAG.match(image.rpartition(":")[2]) or ":" not in image:
                loose.append(f"Dockerfile: {image}")
    assert not loose, f"images not pinned to an exact version: {loose}"


def check_long_running_services_have_healthchecks(stack: Stack) -> None:
    for name, service in stack.raw["services"].items():
        assert "restart" in service, f"{name} must say its restart policy ('no' for a one-shot job)"
    missing = [
        name
        for name, service in stack.services.items()
        if not is_one_shot(service) and not healthcheck_test(service)
    ]
    assert not missing, f"long-running services without a healthcheck: {missing}"
    for name, service in stack.workers_and_gateway().items():
        port = settings_of(service).metrics_port
        assert port is not None, f"{name} must serve metrics (CARDFLOW_METRICS_PORT)"
        assert f"127.0.0.1:{port}/metrics" in healthcheck_test(service), (
            f"{name}'s healthcheck must GET its /metrics on port {port}"
        )


def check_dependencies(stack: Stack) -> None:
    for name, service in stack.services.items():
        for target, condition in depends_on(service).items():
            assert target in stack.services, f"{name} depends on {target!r}, which is no service"
            assert condition in DEPENDENCY_CONDITIONS, f"{name} -> {target}: {condition!r}"
            dependency = stack.services[target]
            if condition == "service_healthy":
                assert healthcheck_test(dependency), (
                    f"{name} waits for {target} to be healthy; it has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert is_one_shot(dependency), (
                    f"{name} waits for {target} to complete; it never does"
                )
            if not is_one_shot(dependency):
                assert condition == "service_healthy", (
                    f"{name} must wait for {target} to be healthy, not merely started"
                )
    # Compose refuses a cycle; find one here with its path.
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, "dependency cycle: " + " -> ".join([*visiting, name])
        if name in done:
            return
        visiting.append(name)
        for target in depends_on(stack.services[name]):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in stack.services:
        visit(name)


def check_search_attributes(stack: Stack) -> None:
    registering = {
        name: service
        for name, service in stack.with_image("temporalio/admin-tools:").items()
        if "search-attribute create" in script(service)
    }
    job_name, job = only(registering, "search-attribute job")
    assert is_one_shot(job), f"{job_name} must be a one-shot job"
    match = re.search(r'^\s*attributes="([^"]*)"', script(job), re.MULTILINE)
    assert match, f'{job_name} must list the attributes as attributes="Name:Type ..."'
    registered = dict(pair.split(":", 1) for pair in match.group(1).split())
    expected = {key.name: key._metadata_type for key in ALL_SEARCH_ATTRIBUTES}
    assert registered == expected, (
        f"{job_name} registers {registered}, schemas/search.py has {expected}"
    )

    job_variables = environment(job)
    for name, service in stack.workers_and_gateway().items():
        settings = settings_of(service)
        assert job_variables.get("TEMPORAL_NAMESPACE") == settings.temporal_namespace, (
            f"{job_name} sets up another namespace than {name} uses"
        )
        assert job_variables.get("TEMPORAL_ADDRESS") == settings.temporal_target
        assert depends_on(service).get(job_name) == "service_completed_successfully", (
            f"{name} must start only after {job_name} registered the search attributes"
        )


def check_worker_replicas_are_configurable(stack: Stack) -> None:
    variables = set()
    for kind in QUEUE_KINDS:
        name, _ = stack.one_by_role("worker", "run", kind)
        raw = stack.raw["services"][name]
        replicas = (raw.get("deploy") or {}).get("replicas")
        match = REPLICAS_VARIABLE.match(str(replicas))
        assert match, f"{name}: deploy.replicas must be ${{VARIABLE:-N}}, is {replicas!r}"
        variables.add(match.group("name"))
        # A replica cannot publish a fixed host port or take a fixed name.
        assert not raw.get("ports") and not raw.get("container_name"), f"{name} cannot scale"
    assert len(variables) == len(QUEUE_KINDS), "each task queue's workers scale on their own"


def check_temporal_on_postgresql_with_admin_tools_schema(stack: Stack) -> None:
    assert not stack.with_image("temporalio/auto-setup"), "the server must not use auto-setup"
    server_name, server = only(stack.with_image("temporalio/server:"), "Temporal server")
    server_variables = environment(server)
    assert server_variables.get("DB") == "postgres12", "the server must use the postgres12 plugin"
    database_name = server_variables.get("POSTGRES_SEEDS", "")
    assert str(stack.service(database_name).get("image", "")).startswith("postgres:")

    schema_jobs = {
        name: service
        for name, service in stack.with_image("temporalio/admin-tools:").items()
        if "temporal-sql-tool" in script(service)
    }
    job_name, job = only(schema_jobs, "schema job")
    assert is_one_shot(job), f"{job_name} must be a one-shot job"
    text = script(job)
    for step in ("create-database", "setup-schema", "update-schema"):
        assert step in text, f"{job_name} does not run temporal-sql-tool {step}"
    set_up = dict(re.findall(r"^\s*setup_database (\S+) (\S+)\s*$", text, re.MULTILINE))
    expected = {
        server_variables.get("DBNAME", "temporal"): "temporal",
        server_variables.get("VISIBILITY_DBNAME", "temporal_visibility"): "visibility",
    }
    assert set_up == expected, f"{job_name} sets up {set_up}; the server uses {expected}"
    assert f"schema_root={TEMPORAL_SCHEMA_ROOT}" in text, (
        f"{job_name} must use {TEMPORAL_SCHEMA_ROOT}"
    )

    job_variables = environment(job)
    assert job_variables.get("SQL_PLUGIN") == "postgres12"
    assert (job_variables.get("SQL_HOST"), job_variables.get("SQL_PORT")) == (
        database_name,
        server_variables.get("DB_PORT", "5432"),
    ), f"{job_name} sets up another database server than {server_name} uses"
    assert (job_variables.get("SQL_USER"), job_variables.get("SQL_PASSWORD")) == (
        server_variables.get("POSTGRES_USER"),
        server_variables.get("POSTGRES_PWD"),
    )
    assert depends_on(server).get(job_name) == "service_completed_successfully", (
        f"{server_name} must start only after {job_name} set up its schema"
    )
    # The schema the tools install is the one their own release of the server expects.
    server_version = str(server["image"]).rpartition(":")[2]
    tools_version = str(job["image"]).rpartition(":")[2].split("-")[0]
    assert tools_version == server_version, (
        f"admin tools {tools_version} != server {server_version}"
    )


def check_cardflow_commands_exist(stack: Stack) -> None:
    root = typer.main.get_command(cli_app)
    for name, service in stack.cardflow_services().items():
        words = command(service)
        assert words[:1] == ["cardflow"], f"{name} must run `cardflow ...`"
        # A group has sub-commands by name; a command does not.
        current: Any = root
        rest = words[1:]
        while hasattr(current, "commands") and rest:
            found = current.commands.get(rest[0])
            assert found is not None, f"{name}: `{' '.join(words)}` is no cardflow command"
            current, rest = found, rest[1:]
        assert not hasattr(current, "commands"), f"{name}: `{' '.join(words)}` is incomplete"
        if words[1:3] == ["worker", "run"]:
            assert rest and rest[0] in QUEUE_KINDS, f"{name}: unknown worker kind {rest}"


MONITORING = ROOT / "workers" / "monitoring"


def check_monitoring(stack: Stack) -> None:
    """Prometheus scrapes every part with the rules mounted, Alertmanager
    reads its config and the webhook URL file, Grafana gets its datasource and
    dashboards where its provisioning says, each UI on loopback only."""
    prometheus_name, prometheus = only(stack.with_image("prom/prometheus:"), "Prometheus")
    config_path = mounted_file(prometheus_name, prometheus, "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load(config_path.read_text())
    mounts = bind_mounts(prometheus)
    for pattern in config["rule_files"]:
        container = str(Path("/etc/prometheus") / pattern)
        host = next(
            (
                mounts[target] / Path(container).relative_to(target)
                for target in mounts
                if container.startswith(target + "/")
            ),
            None,
        )
        assert host is not None and host.is_file(), f"rule file {pattern} is not mounted"
    scraped: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        for dns in job.get("dns_sd_configs", []):
            scraped |= {(name, int(dns["port"])) for name in dns["names"]}
        for static in job.get("static_configs", []):
            scraped |= {host_and_port(target) for target in static["targets"]}
    for name, service in stack.workers_and_gateway().items():
        port = settings_of(service).metrics_port
        assert (name, port) in scraped, f"Prometheus does not scrape {name} on {port}"
    temporal_name, temporal = only(stack.with_image("temporalio/server:"), "Temporal server")
    endpoint = environment(temporal).get("PROMETHEUS_ENDPOINT", "")
    assert endpoint, f"{temporal_name} serves no metrics (PROMETHEUS_ENDPOINT)"
    assert (temporal_name, host_and_port(endpoint)[1]) in scraped, (
        f"Prometheus does not scrape {temporal_name}"
    )
    alertmanager_name, alertmanager = only(stack.with_image("prom/alertmanager:"), "Alertmanager")
    targets = {
        host_and_port(target)
        for entry in config["alerting"]["alertmanagers"]
        for static in entry["static_configs"]
        for target in static["targets"]
    }
    assert targets == {(alertmanager_name, 9093)}, f"alerts go to {targets}"
    routes = yaml.safe_load(
        mounted_file(
            alertmanager_name, alertmanager, "/etc/alertmanager/alertmanager.yml"
        ).read_text()
    )
    for receiver in routes["receivers"]:
        for slack in receiver.get("slack_configs", []):
            mounted_file(alertmanager_name, alertmanager, slack["api_url_file"])
    grafana_name, grafana = only(stack.with_image("grafana/grafana:"), "Grafana")
    provisioning = bind_mounts(grafana).get("/etc/grafana/provisioning")
    assert provisioning is not None, f"{grafana_name}: provisioning is not mounted"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    [datasource] = datasources["datasources"]
    assert host_and_port(urlsplit(datasource["url"]).netloc) == (prometheus_name, 9090)
    providers = yaml.safe_load((provisioning / "dashboards" / "cardflow.yml").read_text())
    for provider in providers["providers"]:
        path = provider["options"]["path"]
        host = bind_mounts(grafana).get(path)
        assert host is not None and sorted(host.glob("*.json")), (
            f"{grafana_name}: no dashboards mounted at {path}"
        )
    for name, port in ((prometheus_name, 9090), (alertmanager_name, 9093), (grafana_name, 3000)):
        assert published_port(stack.service(name), port)[0] == "127.0.0.1", (
            f"{name} must be published on loopback only"
        )


def only(found: Mapping[str, dict[str, Any]], what: str) -> tuple[str, dict[str, Any]]:
    assert len(found) == 1, f"expected one {what}, found {sorted(found)}"
    return next(iter(found.items()))


# ----- the tests ----------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def certs() -> Iterator[Path]:
    """The mTLS files, where the sample CARDFLOW_TEMPORAL_CERTS_DIR points."""
    directory = Path(SAMPLE_VARIABLES["CARDFLOW_TEMPORAL_CERTS_DIR"])
    certificates.generate(directory)
    Path(SAMPLE_VARIABLES["CARDFLOW_ALERT_WEBHOOK_URL_FILE"]).write_text(
        "https://hooks.slack.invalid/services/compose-test\n"
    )
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def stack() -> Stack:
    return load_stack()


def test_every_variable_given_to_a_cardflow_process_is_a_setting_it_reads(stack: Stack) -> None:
    check_cardflow_variables_are_settings(stack)


def test_every_cardflow_process_environment_passes_load_settings(stack: Stack) -> None:
    check_cardflow_environments_load(stack)


def test_the_stack_refuses_to_start_without_keys_and_webhook_secrets(stack: Stack) -> None:
    check_required_variables_refuse_to_start(stack)


def test_workers_and_gateway_reach_temporal_the_ledger_and_the_providers(stack: Stack) -> None:
    check_roles(stack)


def test_the_web_ui_decodes_through_the_codec_it_is_allowed_by(stack: Stack) -> None:
    check_codec_and_web_ui(stack)


def test_every_image_is_pinned_to_an_exact_version(stack: Stack) -> None:
    check_images_are_pinned(stack)


def test_every_long_running_service_has_a_healthcheck(stack: Stack) -> None:
    check_long_running_services_have_healthchecks(stack)


def test_every_dependency_names_a_service_and_a_condition_it_can_meet(stack: Stack) -> None:
    check_dependencies(stack)


def test_the_setup_job_registers_exactly_cardflows_search_attributes(stack: Stack) -> None:
    check_search_attributes(stack)


def test_worker_replicas_are_configurable_per_task_queue(stack: Stack) -> None:
    check_worker_replicas_are_configurable(stack)


def test_temporal_runs_on_postgresql_with_its_schema_set_up_by_the_admin_tools(
    stack: Stack,
) -> None:
    check_temporal_on_postgresql_with_admin_tools_schema(stack)


def test_every_cardflow_service_runs_a_real_cli_command(stack: Stack) -> None:
    check_cardflow_commands_exist(stack)


def test_temporal_requires_mtls_and_every_client_presents_its_own_certificate(
    stack: Stack,
) -> None:
    check_temporal_requires_mtls(stack)


# ----- each check fails on a file broken the way it guards against -------------

Breakage = Callable[[dict[str, Any]], object]


def _env(raw: dict[str, Any], service: str) -> dict[str, Any]:
    """A service's own environment mapping (merged anchors copied out first)."""
    target = raw["services"][service]
    copied: dict[str, Any] = dict(target["environment"])
    target["environment"] = copied
    return copied


def _set_script(raw: dict[str, Any], service: str, old: str, new: str) -> None:
    text = raw["services"][service]["command"][0]
    assert old in text, f"breakage out of date: {old!r} not in {service}'s script"
    raw["services"][service]["command"] = [text.replace(old, new)]


def _set_dependency(raw: dict[str, Any], service: str, target: str, condition: str) -> None:
    dependencies = dict(raw["services"][service].get("depends_on") or {})
    dependencies[target] = {"condition": condition}
    raw["services"][service]["depends_on"] = dependencies


BREAKAGES: dict[str, tuple[Callable[[Stack], None], Breakage]] = {
    "unknown cardflow variable": (
        check_cardflow_variables_are_settings,
        lambda raw: _env(raw, "worker-ledger").update(CARDFLOW_LEDGER_CONCURRENCY="8"),
    ),
    "unknown TEMPORAL_ variable": (
        check_cardflow_variables_are_settings,
        lambda raw: _env(raw, "gateway").update(TEMPORAL_HOST="temporal"),
    ),
    "invalid setting value": (
        check_cardflow_environments_load,
        lambda raw: _env(raw, "worker-providers").update(CARDFLOW_METRICS_PORT="metrics"),
    ),
    "bad OTLP endpoint": (
        check_cardflow_environments_load,
        lambda raw: _env(raw, "gateway").update(OTEL_EXPORTER_OTLP_ENDPOINT="otel-collector:4318"),
    ),
    "keys given a default": (
        check_required_variables_refuse_to_start,
        lambda raw: _env(raw, "codec").update(
            CARDFLOW_ENCRYPTION_KEYS="${CARDFLOW_ENCRYPTION_KEYS:-}"
        ),
    ),
    "gateway without the ledger": (
        check_roles,
        lambda raw: _env(raw, "gateway").pop("DATABASE_URL"),
    ),
    "worker on the wrong Temporal port": (
        check_roles,
        lambda raw: _env(raw, "worker-workflows").update(TEMPORAL_ADDRESS="temporal:7234"),
    ),
    "ledger password out of step": (
        check_roles,
        lambda raw: _env(raw, "cardflow-db").update(POSTGRES_PASSWORD="rotated"),
    ),
    "simulators sign with other secrets": (
        check_roles,
        lambda raw: _env(raw, "simulators").update(
            CARDFLOW_WEBHOOK_SECRETS=json.dumps({"issuer": "whsec_" + "0" * 43})
        ),
    ),
    "codec allows another origin": (
        check_codec_and_web_ui,
        lambda raw: _env(raw, "codec").update(CARDFLOW_CODEC_CORS_ORIGINS="http://localhost:8080"),
    ),
    "UI calls the codec at another port": (
        check_codec_and_web_ui,
        lambda raw: _env(raw, "temporal-ui").update(
            TEMPORAL_CODEC_ENDPOINT="http://localhost:8081"
        ),
    ),
    "UI calls the codec without its token": (
        check_codec_and_web_ui,
        lambda raw: _env(raw, "temporal-ui").update(
            TEMPORAL_CODEC_ENDPOINT="http://localhost:8234"
        ),
    ),
    "codec published beyond loopback": (
        check_codec_and_web_ui,
        lambda raw: raw["services"]["codec"].update(ports=["8234:8234"]),
    ),
    "bare major version": (
        check_images_are_pinned,
        lambda raw: raw["services"]["postgresql"].update(image="postgres:16"),
    ),
    "latest tag": (
        check_images_are_pinned,
        lambda raw: raw["services"]["temporal-ui"].update(image="temporalio/ui:latest"),
    ),
    "no tag": (
        check_images_are_pinned,
        lambda raw: raw["services"]["cardflow-db"].update(image="postgres"),
    ),
    "gateway without a healthcheck": (
        check_long_running_services_have_healthchecks,
        lambda raw: raw["services"]["gateway"].pop("healthcheck"),
    ),
    "disabled healthcheck": (
        check_long_running_services_have_healthchecks,
        lambda raw: raw["services"]["temporal"].update(healthcheck={"disable": True}),
    ),
    "worker checks the wrong metrics port": (
        check_long_running_services_have_healthchecks,
        lambda raw: _env(raw, "worker-ledger").update(CARDFLOW_METRICS_PORT="9465"),
    ),
    "no restart policy": (
        check_long_running_services_have_healthchecks,
        lambda raw: raw["services"]["simulators"].pop("restart"),
    ),
    "dependency on a missing service": (
        check_dependencies,
        lambda raw: _set_dependency(raw, "gateway", "redis", "service_started"),
    ),
    "healthy wait on a one-shot job": (
        check_dependencies,
        lambda raw: _set_dependency(raw, "schedules", "db-migrate", "service_healthy"),
    ),
    "completion wait on a server": (
        check_dependencies,
        lambda raw: _set_dependency(
            raw, "gateway", "cardflow-db", "service_completed_successfully"
        ),
    ),
    "mere start of a server": (
        check_dependencies,
        lambda raw: _set_dependency(raw, "temporal-setup", "temporal", "service_started"),
    ),
    "unknown condition": (
        check_dependencies,
        lambda raw: _set_dependency(raw, "gateway", "temporal", "service_ready"),
    ),
    "dependency cycle": (
        check_dependencies,
        lambda raw: _set_dependency(
            raw, "temporal", "temporal-setup", "service_completed_successfully"
        ),
    ),
    "attribute missing": (
        check_search_attributes,
        lambda raw: _set_script(raw, "temporal-setup", " Provider:Keyword", ""),
    ),
    "attribute with another type": (
        check_search_attributes,
        lambda raw: _set_script(raw, "temporal-setup", "AmountMinor:Int", "AmountMinor:Keyword"),
    ),
    "workers start before the attributes exist": (
        check_search_attributes,
        lambda raw: raw["services"]["worker-ledger"].update(
            depends_on={
                k: v
                for k, v in raw["services"]["worker-ledger"]["depends_on"].items()
                if k != "temporal-setup"
            }
        ),
    ),
    "fixed replica count": (
        check_worker_replicas_are_configurable,
        lambda raw: raw["services"]["worker-ledger"].update(deploy={"replicas": 2}),
    ),
    "worker publishing a port": (
        check_worker_replicas_are_configurable,
        lambda raw: raw["services"]["worker-providers"].update(ports=["127.0.0.1:9464:9464"]),
    ),
    "auto-setup server": (
        check_temporal_on_postgresql_with_admin_tools_schema,
        lambda raw: raw["services"]["temporal"].update(image="temporalio/auto-setup:1.28.1"),
    ),
    "visibility schema not set up": (
        check_temporal_on_postgresql_with_admin_tools_schema,
        lambda raw: _set_script(
            raw, "temporal-schema", "setup_database temporal_visibility visibility", ""
        ),
    ),
    "server on another database plugin": (
        check_temporal_on_postgresql_with_admin_tools_schema,
        lambda raw: _env(raw, "temporal").update(DB="mysql8"),
    ),
    "admin tools of another release": (
        check_temporal_on_postgresql_with_admin_tools_schema,
        lambda raw: raw["services"]["temporal-schema"].update(
            image="temporalio/admin-tools:1.27.2-tctl-1.18.2-cli-1.3.0"
        ),
    ),
    "server starts before its schema": (
        check_temporal_on_postgresql_with_admin_tools_schema,
        lambda raw: raw["services"]["temporal"]["depends_on"].pop("temporal-schema"),
    ),
    "frontend without client authentication": (
        check_temporal_requires_mtls,
        lambda raw: _env(raw, "temporal").update(TEMPORAL_TLS_REQUIRE_CLIENT_AUTH="false"),
    ),
    "frontend trusting no client CA": (
        check_temporal_requires_mtls,
        lambda raw: _env(raw, "temporal").pop("TEMPORAL_TLS_CLIENT1_CA_CERT"),
    ),
    "worker without a client certificate": (
        check_temporal_requires_mtls,
        lambda raw: [
            _env(raw, "worker-ledger").pop(v) for v in ("TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY")
        ],
    ),
    "gateway without its mounts": (
        check_temporal_requires_mtls,
        lambda raw: raw["services"]["gateway"].update(volumes=[]),
    ),
    "Web UI mounting the wrong key": (
        check_temporal_requires_mtls,
        lambda raw: raw["services"]["temporal-ui"]["volumes"][2].update(
            source="${CARDFLOW_TEMPORAL_CERTS_DIR:-./certs}/cardflow.key"
        ),
    ),
    "Web UI without host verification": (
        check_temporal_requires_mtls,
        lambda raw: _env(raw, "temporal-ui").update(TEMPORAL_TLS_ENABLE_HOST_VERIFICATION="false"),
    ),
    "client verifying another server name": (
        check_temporal_requires_mtls,
        lambda raw: _env(raw, "schedules").update(TEMPORAL_TLS_SERVER_NAME="temporal.internal"),
    ),
    "setup job without a client certificate": (
        check_temporal_requires_mtls,
        lambda raw: _set_script(
            raw,
            "temporal-setup",
            '--tls-cert-path "$$TEMPORAL_TLS_CERT" --tls-key-path "$$TEMPORAL_TLS_KEY"',
            "",
        ),
    ),
    "health check without a certificate": (
        check_temporal_requires_mtls,
        lambda raw: raw["services"]["temporal"].update(
            healthcheck={
                "test": [
                    "CMD-SHELL",
                    "temporal operator cluster health --address temporal:7233 | grep -q SERVING",
                ]
            }
        ),
    ),
    "frontend published beyond loopback": (
        check_temporal_requires_mtls,
        lambda raw: raw["services"]["temporal"].update(ports=["7233:7233"]),
    ),
    "misspelt command": (
        check_cardflow_commands_exist,
        lambda raw: raw["services"]["worker-ledger"].update(
            command=["cardflow", "worker", "start", "ledger"]
        ),
    ),
    "unknown worker kind": (
        check_cardflow_commands_exist,
        lambda raw: raw["services"]["worker-ledger"].update(
            command=["cardflow", "worker", "run", "billing"]
        ),
    ),
}


def test_prometheus_scrapes_every_part_and_alerts_and_dashboards_are_provisioned(
    stack: Stack,
) -> None:
    check_monitoring(stack)


def _without_scrape_of(raw: dict[str, Any], service: str) -> None:
    """Mount a copy of prometheus.yml that no longer scrapes `service`."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        for dns in job.get("dns_sd_configs", []):
            dns["names"] = [name for name in dns["names"] if name != service]
    copied = Path(SAMPLE_VARIABLES["CARDFLOW_TEMPORAL_CERTS_DIR"]) / "prometheus.yml"
    copied.write_text(yaml.safe_dump(config))
    for volume in raw["services"]["prometheus"]["volumes"]:
        if isinstance(volume, dict) and volume["target"] == "/etc/prometheus/prometheus.yml":
            volume["source"] = str(copied)


def _move_mount(raw: dict[str, Any], service: str, target: str, elsewhere: str) -> None:
    for volume in raw["services"][service]["volumes"]:
        if isinstance(volume, dict) and volume["target"] == target:
            volume["target"] = elsewhere


BREAKAGES.update(
    {
        "a worker not scraped": (
            check_monitoring,
            lambda raw: _without_scrape_of(raw, "worker-ledger"),
        ),
        "Temporal's metrics off": (
            check_monitoring,
            lambda raw: _env(raw, "temporal").pop("PROMETHEUS_ENDPOINT"),
        ),
        "rules not mounted": (
            check_monitoring,
            lambda raw: _move_mount(raw, "prometheus", "/etc/prometheus/rules", "/rules"),
        ),
        "no webhook URL for the alerts": (
            check_monitoring,
            lambda raw: _move_mount(
                raw, "alertmanager", "/etc/alertmanager/webhook-url", "/etc/webhook-url"
            ),
        ),
        "dashboards mounted elsewhere": (
            check_monitoring,
            lambda raw: _move_mount(
                raw, "grafana", "/etc/grafana/dashboards", "/var/lib/grafana/dashboards"
            ),
        ),
        "Grafana published beyond loopback": (
            check_monitoring,
            lambda raw: raw["services"]["grafana"].update(ports=["3000:3000"]),
        ),
        "Prometheus without a healthcheck": (
            check_long_running_services_have_healthchecks,
            lambda raw: raw["services"]["prometheus"].pop("healthcheck"),
        ),
        "Grafana on a floating tag": (
            check_images_are_pinned,
            lambda raw: raw["services"]["grafana"].update(image="grafana/grafana:latest"),
        ),
    }
)


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_each_check_fails_on_a_file_broken_the_way_it_guards_against(
    stack: Stack, breakage: str
) -> None:
    check, breaks = BREAKAGES[breakage]
    raw = copy.deepcopy(stack.raw)
    breaks(raw)
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        check(Stack.of(raw))
