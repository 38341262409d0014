"""The one HTTP boundary to providers.

Every call has explicit timeouts; every mutating call carries an idempotency
key, so any retry (in the call or by Temporal) is safe. Inside one call,
tenacity retries only what is cheap and certain to be transient: a connection
that could not be made or was dropped, and a 429 whose Retry-After is short;
it gives up after IN_CALL_ATTEMPTS_MAX so it never fights Temporal's retry
policy. Then every failure is classified, here and only here, into an
ApplicationError whose type name the activity retry policy knows:

    ProviderTimeout, ProviderUnreachable, ProviderUnavailable (5xx),
    ProviderRateLimited (429; next_retry_delay = Retry-After)      retryable
    ProviderRejectedRequest (400/422/other 4xx), ProviderNotFound,
    ProviderConflict (409), ProviderAuthError (401/403),
    ProviderContractError (a response we cannot parse)             non-retryable

An error keeps the status, the provider's own error code (an identifier such
as `rate_limit_error`, or a validation error's type and field) and the
provider's request id; never the body. A provider's error body may echo what
it was sent (a KYC 422 repeats the date of birth it refused), and the error's
message is what Temporal's SDK logs and records.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import ssl
import time
from datetime import timedelta
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError
from temporalio.common import MetricMeter, RetryPolicy
from temporalio.exceptions import ApplicationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from activities.metrics import record_provider_call

log = logging.getLogger("cardflow.providers")

T = TypeVar("T")

PROVIDER_TIMEOUT = httpx.Timeout(connect=2.0, read=5.0, write=5.0, pool=2.0)
IN_CALL_ATTEMPTS_MAX = 3
# A longer Retry-After is Temporal's to wait (next_retry_delay), not the call's.
IN_CALL_RETRY_AFTER_SECONDS_MAX = 3.0
# What an error keeps of a provider's answer: its request id, and codes that
# are identifiers (personal data never matches), a few at most.
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-correlation-id")
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_CODE_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_FIELD_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
ERROR_CODES_MAX = 5
# An error body larger than this is not read for codes.
ERROR_BODY_BYTES_MAX = 64 * 1024
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

RETRYABLE_ERROR_TYPES = (
    "ProviderTimeout",
    "ProviderUnreachable",
    "ProviderUnavailable",
    "ProviderRateLimited",
)
NON_RETRYABLE_ERROR_TYPES = (
    "ProviderRejectedRequest",
    "ProviderNotFound",
    "ProviderConflict",
    "ProviderAuthError",
    "ProviderContractError",
)

PROVIDER_START_TO_CLOSE = timedelta(seconds=30)
PROVIDER_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=list(NON_RETRYABLE_ERROR_TYPES),
)


class _RetryInCall(Exception):
    """A 429 worth waiting for inside the call."""

    def __init__(self, response: httpx.Response, retry_after_seconds: float) -> None:
        super().__init__(f"429, retry after {retry_after_seconds}s")
        self.response = response
        self.retry_after_seconds = retry_after_seconds


def _retry_after_seconds(response: httpx.Response) -> float | None:
    """The wait a 429 asks for: its Retry-After header, or in the Telegram Bot
    API's own shape, the body's `parameters.retry_after`."""
    value = response.headers.get("retry-after")
    if value is None and response.status_code == 429:
        value = _body_retry_after(response)
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _body_retry_after(response: httpx.Response) -> Any:
    if len(response.content) > ERROR_BODY_BYTES_MAX:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    parameters = body.get("parameters") if isinstance(body, dict) else None
    return parameters.get("retry_after") if isinstance(parameters, dict) else None


def _in_call_retryable(method: str, keyed: bool) -> Any:
    def check(error: BaseException) -> bool:
        if isinstance(error, _RetryInCall | httpx.ConnectError | httpx.ConnectTimeout):
            return True
        # A dropped connection may have reached the provider: only safe to
        # repeat when the call cannot act twice.
        if isinstance(error, httpx.RemoteProtocolError | httpx.ReadError):
            return keyed or method not in MUTATING_METHODS
        return False

    return retry_if_exception(check)


def _wait(retry_state: RetryCallState) -> float:
    error = retry_state.outcome.exception() if retry_state.outcome else None
    if isinstance(error, _RetryInCall):
        return error.retry_after_seconds
    return float(wait_exponential(multiplier=0.1, max=1.0)(retry_state))


@functools.cache
def provider_tls() -> ssl.SSLContext:
    """The TLS verification every provider client of a process shares: the
    CA bundle (httpx's default: certifi's, or SSL_CERT_FILE / SSL_CERT_DIR)
    is read once per process, not once per client (about 20 ms each)."""
    return httpx.create_ssl_context()


class ProviderClient:
    """Base of every provider client; subclasses add one method per API call."""

    provider = "provider"

    def __init__(
        self,
        base_url: str,
        *,
        timeout: httpx.Timeout = PROVIDER_TIMEOUT,
        headers: dict[str, str] | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        # Where calls made outside an activity are timed (the gateway's meter).
        self.meter: MetricMeter | None = None
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            headers=headers,
            verify=provider_tls(),
            limits=limits or httpx.Limits(),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def call(
        self,
        method: str,
        path: str,
        response_type: type[T],
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> T:
        """One API call, parsed into response_type; raises a classified
        ApplicationError. Timed for the provider-call metric, by outcome:
        `ok` or the error's type."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self._call(
                method,
                path,
                response_type,
                json=json,
                params=params,
                idempotency_key=idempotency_key,
            )
        except ApplicationError as error:
            outcome = error.type or "error"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except BaseException:
            outcome = "error"
            raise
        finally:
            record_provider_call(
                self.provider,
                outcome,
                timedelta(seconds=time.perf_counter() - started),
                self.meter,
            )

    async def _call(
        self,
        method: str,
        path: str,
        response_type: type[T],
        *,
        json: Any,
        params: dict[str, Any] | None,
        idempotency_key: str | None,
    ) -> T:
        method = method.upper()
        if method in MUTATING_METHODS and not idempotency_key:
            raise ValueError(f"{method} {path} needs an idempotency key")
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        started = time.perf_counter()
        if isinstance(json, BaseModel):
            json = json.model_dump(mode="json", exclude_none=True)
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(IN_CALL_ATTEMPTS_MAX),
                retry=_in_call_retryable(method, idempotency_key is not None),
                wait=_wait,
                reraise=True,
            ):
                with attempt:
                    response = await self._http.request(
                        method, path, json=json, params=params, headers=headers
                    )
                    retry_after = _retry_after_seconds(response)
                    if (
                        response.status_code == 429
                        and retry_after is not None
                        and retry_after <= IN_CALL_RETRY_AFTER_SECONDS_MAX
                    ):
                        raise _RetryInCall(response, retry_after)
        except _RetryInCall as error:
            response = error.response
        except httpx.TimeoutException as error:
            if isinstance(error, httpx.ConnectTimeout | httpx.PoolTimeout):
                raise self._error(
                    "ProviderUnreachable", method, path, detail=repr(error)
                ) from error
            raise self._error("ProviderTimeout", method, path, detail=repr(error)) from error
        except httpx.TransportError as error:
            raise self._error("ProviderUnreachable", method, path, detail=repr(error)) from error
        # One line per call (bodies never: they carry personal data); inside
        # an activity the line also carries the activity's and workflow's ids.
        elapsed_ms = round((time.perf_counter() - started) * 1000)
        log.info(
            "%s %s %s answered %d in %d ms",
            self.provider,
            method,
            path,
            response.status_code,
            elapsed_ms,
            extra={
                "provider": self.provider,
                "http_status": response.status_code,
                "duration_ms": elapsed_ms,
            },
        )
        return self._parse(method, path, response, response_type)

    def _parse(self, method: str, path: str, response: httpx.Response, response_type: type[T]) -> T:
        status = response.status_code
        if status < 300:
            try:
                return TypeAdapter(response_type).validate_json(response.content or b"null")
            except ValidationError as error:
                # The error's own text quotes the values it refused: keep only
                # where and what kind of problem, as the codes of a 422 are kept.
                raise self._error(
                    "ProviderContractError",
                    method,
                    path,
                    status,
                    code="unexpected response: " + _validation_codes(error.errors()),
                    request_id=_request_id(response),
                ) from None
        code, request_id = _error_code(response), _request_id(response)
        if status == 429:
            retry_after = _retry_after_seconds(response) or 1.0
            raise self._error(
                "ProviderRateLimited",
                method,
                path,
                status,
                code=code,
                request_id=request_id,
                next_retry_delay=timedelta(seconds=retry_after),
            )
        if status >= 500:
            raise self._error(
                "ProviderUnavailable", method, path, status, code=code, request_id=request_id
            )
        kind = {
            401: "ProviderAuthError",
            403: "ProviderAuthError",
            404: "ProviderNotFound",
            409: "ProviderConflict",
        }.get(status, "ProviderRejectedRequest")
        raise self._error(kind, method, path, status, code=code, request_id=request_id)

    def _error(
        self,
        kind: str,
        method: str,
        path: str,
        status: int | None = None,
        *,
        code: str | None = None,
        request_id: str | None = None,
        detail: str | None = None,
        next_retry_delay: timedelta | None = None,
    ) -> ApplicationError:
        """The classified error. `detail` is cardflow's own text (a transport
        error), never anything the provider sent."""
        parts = [f"{self.provider} {method} {path}:"]
        parts += [str(status)] if status is not None else []
        parts += [part for part in (code, detail) if part]
        if request_id:
            parts.append(f"(request {request_id})")
        return ApplicationError(
            " ".join(parts),
            {"status": status, "code": code, "request_id": request_id},
            type=kind,
            non_retryable=kind in NON_RETRYABLE_ERROR_TYPES,
            next_retry_delay=next_retry_delay,
        )


def _request_id(response: httpx.Response) -> str | None:
    """The provider's id of this request, for its support desk and its logs."""
    for name in REQUEST_ID_HEADERS:
        value = str(response.headers.get(name, "")).strip()
        if _REQUEST_ID_PATTERN.match(value):
            return value
    return None


def _error_code(response: httpx.Response) -> str | None:
    """The provider's own code for an error, read from the shapes providers use:
    `{"error": {"type", "code"}}` (Stripe-like), top-level `code`/`type`/
    `errorCode`/`errorName` (Sumsub-like), or a validation error list
    `{"detail": [{"type", "loc"}]}` (FastAPI). Free text (`message`, `detail`
    as a string, `msg`, `input`) is never read: it may echo the request."""
    if len(response.content) > ERROR_BODY_BYTES_MAX:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("detail"), list):
        return _validation_codes(body["detail"]) or None
    error = body.get("error")
    holder: dict[str, Any] = error if isinstance(error, dict) else body
    codes = [
        _code(holder.get(name)) for name in ("type", "code", "errorCode", "errorName", "error_code")
    ]
    kept = list(dict.fromkeys(code for code in codes if code))
    return " ".join(kept[:ERROR_CODES_MAX]) or None


def _code(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and _CODE_PATTERN.match(value):
        return value
    return None


def _validation_codes(errors: Any) -> str:
    """`type at loc` per validation error (pydantic's or a provider's 422), each
    part an identifier or an index; the input and the message are left out."""
    kept: list[str] = []
    for entry in errors if isinstance(errors, list) else []:
        if not isinstance(entry, dict):
            continue
        code = _code(entry.get("type")) or "invalid"
        location = entry.get("loc")
        fields = [
            str(part)
            for part in (location if isinstance(location, list | tuple) else [])
            if (isinstance(part, int) and not isinstance(part, bool))
            or (isinstance(part, str) and _FIELD_PATTERN.match(part))
        ]
        kept.append(f"{code} at {'.'.join(fields)}" if fields else code)
    shown = list(dict.fromkeys(kept))
    more = len(shown) - ERROR_CODES_MAX
    return ", ".join(shown[:ERROR_CODES_MAX]) + (f" and {more} more" if more > 0 else "")
