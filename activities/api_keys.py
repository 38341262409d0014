"""API keys of the upstream HTTP API (`/v1`): issue, list, rotate, revoke, verify.

A key reads `cfk_<key_id>_<secret>`: a 12-character key id (the lookup, safe
to show and log) and a 32-byte random secret. The database keeps the key id,
a name, scopes, the customers it is bound to (none: every customer), an
optional expiry and `HMAC-SHA256(pepper, key_id:secret)`;
the pepper lives outside the database (`CARDFLOW_API_KEY_PEPPER`, or a dev
pepper under `CARDFLOW_HOME/secrets/`), so the table alone lets nobody call
the API. The key itself is shown once, when it is issued, and never stored
or logged.

The gateway checks presented keys with the verifier of
activities/api_key_verifier.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, get_args

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.customers import CustomerId

if TYPE_CHECKING:
    from workers.settings import Settings

log = logging.getLogger("cardflow.api_keys")

# ----- scopes ---------------------------------------------------------------

# Start customer processes and take the customer's own steps in them
# (documents, card actions and limits, FX confirm/cancel, dispute evidence).
SCOPE_PROCESSES_START: Final = "processes:start"
# Read any process's status (GET routes).
SCOPE_PROCESSES_READ: Final = "processes:read"
# Read a customer's own data: KYC standing, balances, debt, cards.
SCOPE_CUSTOMERS_READ: Final = "customers:read"
# Have the issuer show a card's number to its holder's device (a
# single-use token; the number never reaches cardflow).
SCOPE_CARDS_REVEAL: Final = "cards:reveal"
# Manage where events go (webhook endpoints), read the event stream and
# have an event delivered again.
SCOPE_WEBHOOKS_MANAGE: Final = "webhooks:manage"
# The Telegram bot: link Telegram users to customers and find whose they are.
SCOPE_TELEGRAM_LINK: Final = "telegram:link"
# An operator's decisions: KYC review, top-up review, card exceptions,
# dispute operator actions, reconciliation decisions.
SCOPE_OPERATIONS: Final = "operations"
# Administrative runs: billing (one customer or every one), reconciliation runs.
# `admin` implies no other scope: a key holds every scope it needs, by name.
SCOPE_ADMIN: Final = "admin"

Scope = Literal[
    "processes:start",
    "processes:read",
    "customers:read",
    "cards:reveal",
    "webhooks:manage",
    "telegram:link",
    "operations",
    "admin",
]
SCOPES: dict[str, str] = {
    SCOPE_PROCESSES_START: "start customer processes and take the customer's steps in them",
    SCOPE_PROCESSES_READ: "read processes' status",
    SCOPE_CUSTOMERS_READ: "read customers' balances, debt, cards and deposit address",
    SCOPE_CARDS_REVEAL: "have the issuer show a card's number to its holder's device",
    SCOPE_WEBHOOKS_MANAGE: "manage webhook endpoints, read the event stream, redeliver events",
    SCOPE_TELEGRAM_LINK: "the Telegram bot: link Telegram users to customers, find whose they are",
    SCOPE_OPERATIONS: "operator decisions: KYC and top-up review, exceptions, disputes, "
    "reconciliation differences",
    SCOPE_ADMIN: "administrative runs: billing, reconciliation",
}
assert set(SCOPES) == set(get_args(Scope)), "every scope has a description"

# ----- the key's format and limits ------------------------------------------

KEY_PREFIX = "cfk_"
KEY_ID_CHARS = 12
KEY_ID_ALPHABET = string.ascii_lowercase + string.digits
SECRET_BYTES = 32
# cfk_ + key id + _ + the secret in unpadded urlsafe base64 (43 characters).
KEY_PATTERN = re.compile(r"^cfk_(?P<key_id>[a-z0-9]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")
KEY_ID_PATTERN = re.compile(r"^[a-z0-9]{12}$")
KEY_NAME_CHARS_MAX = 100
KEY_LIFETIME_DAYS_MAX = 3_650
ROTATION_OVERLAP_HOURS_MAX = 24 * 90
LIST_KEYS_MAX = 10_000
# A key bound to customers names at most this many (a partner's own customers
# need a key each beyond it; the table's CHECK holds the same bound).
KEY_CUSTOMERS_MAX = 100

DEV_PEPPER_FILENAME = "api-key-pepper"


class ApiKeyError(Exception):
    """An API key operation cannot be done (unknown, revoked or expired key)."""


def api_key_pepper(settings: Settings) -> bytes:
    """The pepper keys are hashed with: the setting, else a dev pepper made once.

    The dev pepper lives in `CARDFLOW_HOME/secrets/api-key-pepper` (directory
    0700, file 0600), created atomically so two processes starting at once
    agree on it.
    """
    if settings.api_key_pepper is not None:
        return settings.api_key_pepper.get_secret_value().strip().encode()
    path = dev_pepper_path(settings.home_path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        except FileExistsError:
            pass
    return path.read_text().strip().encode()


def dev_pepper_path(home: Path) -> Path:
    return home / "secrets" / DEV_PEPPER_FILENAME


def parse_key(presented: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    match = KEY_PATTERN.match(presented)
    if match is None:
        return None
    return match["key_id"], match["secret"]


def secret_hash(pepper: bytes, key_id: str, secret: str) -> bytes:
    # The key id is part of the message: a secret verifies only under its own id.
    return hmac.new(pepper, f"{key_id}:{secret}".encode(), hashlib.sha256).digest()


# What a presented key's hash is compared with when its id is unknown: no
# HMAC-SHA256 output is known to equal it, and the comparison costs what a
# real one does.
_NO_KEY_HASH: Final = hashlib.sha256(b"cardflow: no API key has this id").digest()


def _new_key_id() -> str:
    return "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(KEY_ID_CHARS))


def _new_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")


# ----- models ---------------------------------------------------------------


class NewApiKey(BaseModel):
    """What a new key is issued with; errors name the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=KEY_NAME_CHARS_MAX)
    scopes: list[Scope] = Field(min_length=1, max_length=len(SCOPES))
    expires_in_days: int | None = Field(default=None, ge=1, le=KEY_LIFETIME_DAYS_MAX)
    # None: the key acts for every customer. A list binds it to those customers.
    customers: list[CustomerId] | None = Field(
        default=None, min_length=1, max_length=KEY_CUSTOMERS_MAX
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value.strip() or value != value.strip() or not value.isprintable():
            raise ValueError("must be printable text without leading or trailing spaces")
        return value

    @field_validator("scopes")
    @classmethod
    def _unique_scopes(cls, value: list[Scope]) -> list[Scope]:
        return sorted(set(value))

    @field_validator("customers")
    @classmethod
    def _unique_customers(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else sorted(set(value))


class ApiKeyInfo(BaseModel):
    """A key as `cardflow apikey list` shows it: never the key or its hash."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    name: str
    scopes: list[str]
    # None: every customer.
    customers: list[str] | None = None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    rotated_from: str | None

    def state(self, now: datetime) -> Literal["active", "expired", "revoked"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class IssuedKey:
    """A key just issued: `key` is shown to its owner once and kept nowhere."""

    key: str = field(repr=False)
    info: ApiKeyInfo


@dataclass(frozen=True)
class StoredKey:
    """What verification needs of a key; for an unknown id, a stand-in
    (`found` False) whose hash no secret matches."""

    key_id: str
    name: str
    scopes: frozenset[str]
    secret_hash: bytes = field(repr=False)
    expires_at: datetime | None
    revoked_at: datetime | None
    found: bool = True
    customers: frozenset[str] | None = None


@dataclass(frozen=True)
class Principal:
    """Who a verified request comes from."""

    key_id: str
    name: str
    scopes: frozenset[str]
    # The customers the key is bound to; None: it acts for every customer.
    customers: frozenset[str] | None = None

    @property
    def bound(self) -> bool:
        """Bound to customers: it acts for them only, on no program-wide route."""
        return self.customers is not None

    def acts_for(self, customer_id: str | None) -> bool:
        """Whether the key may act on this customer's processes, cards and data
        (an unknown customer, None, is nobody's)."""
        if self.customers is None:
            return True
        return customer_id is not None and customer_id in self.customers


# ----- the store ------------------------------------------------------------

_INFO_COLUMNS = (
    "key_id, name, scopes, customers, created_at, expires_at, revoked_at, last_used_at,"
    " rotated_from"
)


# One row whether or not the id is known: the key's columns, or stand-ins
# ($2 is the hash nothing matches).
_LOOKUP_SQL = (
    "SELECT asked.key_id, k.key_id IS NOT NULL AS found,"
    " coalesce(k.name, 'unknown key') AS name,"
    " coalesce(k.scopes, ARRAY['processes:read']) AS scopes,"
    " coalesce(k.secret_hash, $2) AS secret_hash, k.expires_at, k.revoked_at, k.customers"
    " FROM (SELECT $1::text AS key_id) AS asked"
    " LEFT JOIN api_keys k ON k.key_id = asked.key_id"
)


def _info(row: asyncpg.Record) -> ApiKeyInfo:
    return ApiKeyInfo(**{name: row[name] for name in ApiKeyInfo.model_fields})


class ApiKeyStore:
    """The `api_keys` table."""

    def __init__(self, pool: asyncpg.Pool, pepper: bytes) -> None:
        if not pepper:
            raise ValueError("the API key pepper is empty")
        self._pool = pool
        self._pepper = pepper

    async def create(self, new: NewApiKey) -> IssuedKey:
        """Issue a key with a fresh id and secret."""
        async with self._pool.acquire() as connection:
            return await self._insert(
                connection, new.name, list(new.scopes), new.customers, new.expires_in_days, None
            )

    async def _insert(
        self,
        connection: asyncpg.Connection | PoolConnectionProxy,
        name: str,
        scopes: list[str],
        customers: list[str] | None,
        expires_in_days: int | float | None,
        rotated_from: str | None,
    ) -> IssuedKey:
        secret = _new_secret()
        for _ in range(5):  # 36^12 ids: a collision is all but impossible, never fatal
            key_id = _new_key_id()
            row = await connection.fetchrow(
                f"INSERT INTO api_keys (key_id, name, scopes, secret_hash, expires_at,"
                f" rotated_from, customers) VALUES ($1, $2, $3, $4,"
                f" now() + make_interval(secs => $5::double precision), $6, $7)"
                f" ON CONFLICT (key_id) DO NOTHING RETURNING {_INFO_COLUMNS}",
                key_id,
                name,
                scopes,
                secret_hash(self._pepper, key_id, secret),
                None if expires_in_days is None else float(expires_in_days) * 86_400,
                rotated_from,
                customers,
            )
            if row is not None:
                return IssuedKey(key=f"{KEY_PREFIX}{key_id}_{secret}", info=_info(row))
        raise ApiKeyError("could not find a free key id")  # pragma: no cover

    async def list(self) -> list[ApiKeyInfo]:
        rows = await self._pool.fetch(
            f"SELECT {_INFO_COLUMNS} FROM api_keys ORDER BY created_at, key_id LIMIT $1",
            LIST_KEYS_MAX,
        )
        return [_info(row) for row in rows]

    async def get(self, key_id: str) -> ApiKeyInfo | None:
        row = await self._pool.fetchrow(
            f"SELECT {_INFO_COLUMNS} FROM api_keys WHERE key_id = $1", key_id
        )
        return None if row is None else _info(row)

    async def revoke(self, key_id: str) -> ApiKeyInfo:
        """Revoke a key (a repeat keeps the first revocation time)."""
        row = await self._pool.fetchrow(
            f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1"
            f" RETURNING {_INFO_COLUMNS}",
            key_id,
        )
        if row is None:
            raise ApiKeyError(f"no API key with id {key_id}")
        return _info(row)

    async def rotate(self, key_id: str, overlap: timedelta) -> tuple[IssuedKey, ApiKeyInfo]:
        """A new key with the old one's name, scopes and customers; the old one
        expires after `overlap`.

        The new key lives as long as the old one was issued for (no expiry if
        the old one had none). Revoked or expired keys are not rotated.
        Returns the new key and the old key as it now stands.
        """
        if overlap < timedelta(0):
            raise ValueError("the overlap must not be negative")
        async with self._pool.acquire() as connection, connection.transaction():
            old = await connection.fetchrow(
                "SELECT name, scopes, customers, revoked_at, expires_at,"
                " expires_at <= now() AS expired,"
                " extract(epoch FROM expires_at - created_at)::double precision AS lifetime"
                " FROM api_keys WHERE key_id = $1 FOR UPDATE",
                key_id,
            )
            if old is None:
                raise ApiKeyError(f"no API key with id {key_id}")
            if old["revoked_at"] is not None:
                raise ApiKeyError(f"API key {key_id} is revoked; create a new one instead")
            if old["expired"]:
                raise ApiKeyError(f"API key {key_id} has expired; create a new one instead")
            lifetime_seconds = old["lifetime"]
            issued = await self._insert(
                connection,
                old["name"],
                list(old["scopes"]),
                None if old["customers"] is None else list(old["customers"]),
                None if lifetime_seconds is None else lifetime_seconds / 86_400,
                key_id,
            )
            # LEAST ignores NULL: a key without expiry gets the overlap's end.
            row = await connection.fetchrow(
                f"UPDATE api_keys SET expires_at = LEAST(expires_at,"
                f" now() + make_interval(secs => $2::double precision))"
                f" WHERE key_id = $1 RETURNING {_INFO_COLUMNS}",
                key_id,
                overlap.total_seconds(),
            )
            assert row is not None  # locked above
            return issued, _info(row)

    async def lookup(self, key_id: str) -> StoredKey:
        """The key with this id, or a stand-in when there is none.

        Either way one row of the same columns comes back and is decoded
        alike, so reading an unknown id costs what reading a known one does.
        """
        row = await self._pool.fetchrow(_LOOKUP_SQL, key_id, _NO_KEY_HASH)
        assert row is not None  # the left join answers one row, found or not
        return StoredKey(
            key_id=row["key_id"],
            name=row["name"],
            scopes=frozenset(row["scopes"]),
            secret_hash=bytes(row["secret_hash"]),
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
            found=row["found"],
            customers=None if row["customers"] is None else frozenset(row["customers"]),
        )

    async def touch(self, key_id: str) -> None:
        await self._pool.execute(
            "UPDATE api_keys SET last_used_at = now() WHERE key_id = $1", key_id
        )

    def digest(self, key_id: str, secret: str) -> bytes:
        """The hash a presented key is checked with (and cached under)."""
        return secret_hash(self._pepper, key_id, secret)


# ----- verification -----------------------------------------------------------
