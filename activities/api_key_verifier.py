"""The gateway's check of a presented API key (activities/api_keys.py has the
keys themselves and their store).

A verifier caches what it read of a key for at most `KEY_CACHE_SECONDS`:
a revocation reaches every gateway process within that bound. It caches by
what was presented (the key id and the hash of the secret), refusals too, so
an unknown key id and a known one with a wrong secret take the same steps:
one hash, one cache look-up, one database read on first sight (none on a
repeat within the bound), one constant-time comparison.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Generic, TypeVar

import asyncpg

from activities.api_keys import ApiKeyStore, Principal, StoredKey, parse_key

log = logging.getLogger("cardflow.api_keys")

# A verifier re-reads a key at least this often: revocation and expiry
# changes reach every gateway process within this bound.
KEY_CACHE_SECONDS = 5.0
KEY_CACHE_ENTRIES_MAX = 10_000
# Refusals (an unknown id, a wrong secret) are remembered apart from keys
# that verified, so a flood of made-up keys never pushes a real key out.
REFUSAL_CACHE_ENTRIES_MAX = 10_000
# Keys not in the cache are read from the database at most this many at a
# time per gateway: a flood of made-up keys queues here instead of taking the
# pool's connections from webhooks (the gateway's pool holds 10).
KEY_LOOKUPS_CONCURRENT_MAX = 4
# `last_used_at` is written at most this often per key and process.
LAST_USED_WRITE_INTERVAL_SECONDS = 60.0


V = TypeVar("V")


class _Recent(Generic[V]):
    """At most `entries_max` values with the time each was read; least recently
    used first out."""

    def __init__(self, entries_max: int) -> None:
        self._entries_max = entries_max
        self._entries: OrderedDict[tuple[str, bytes], tuple[V, float]] = OrderedDict()

    def fresh(self, key: tuple[str, bytes], now: float, max_age_seconds: float) -> tuple[V] | None:
        """(value,) when one was read less than `max_age_seconds` ago, else None."""
        entry = self._entries.get(key)
        if entry is None or now - entry[1] >= max_age_seconds:
            return None
        return (entry[0],)

    def put(self, key: tuple[str, bytes], value: V, now: float) -> None:
        self._entries[key] = (value, now)
        self._entries.move_to_end(key)
        while len(self._entries) > self._entries_max:
            self._entries.popitem(last=False)

    def drop(self, matching: Callable[[V], bool]) -> None:
        for key in [key for key, (value, _) in self._entries.items() if matching(value)]:
            del self._entries[key]


class KeyVerifier:
    """Verify presented keys, re-reading each key at least every `cache_seconds`."""

    def __init__(
        self,
        store: ApiKeyStore,
        *,
        cache_seconds: float = KEY_CACHE_SECONDS,
        last_used_interval_seconds: float = LAST_USED_WRITE_INTERVAL_SECONDS,
        cache_entries_max: int = KEY_CACHE_ENTRIES_MAX,
        refusal_cache_entries_max: int = REFUSAL_CACHE_ENTRIES_MAX,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        lookups_concurrent_max: int = KEY_LOOKUPS_CONCURRENT_MAX,
    ) -> None:
        self._store = store
        self._lookups = asyncio.Semaphore(lookups_concurrent_max)
        self._cache_seconds = cache_seconds
        self._last_used_interval_seconds = last_used_interval_seconds
        self._cache_entries_max = cache_entries_max
        self._monotonic = monotonic
        self._now = now
        # (key id, hash of the presented secret) -> (the key, when it was
        # read): keys whose secret was right, and, apart, refusals (None).
        # Only what a caller presented can be found, so a caller's timing
        # depends on its own earlier requests, never on whether another
        # caller uses some key id.
        self._accepted = _Recent[StoredKey](cache_entries_max)
        self._refused = _Recent[None](refusal_cache_entries_max)
        self._touched: dict[str, float] = {}

    async def verify(self, presented: str | None) -> Principal | None:
        """The key's principal when it is well formed, known, unexpired and unrevoked.

        Every other case is None, whatever the reason, so an answer never
        tells a caller whether some key id exists; nor does the work done for
        it: an unknown id and a known one with a wrong secret take the same
        steps (one hash, the same cache and database reads, one comparison).
        """
        parsed = parse_key(presented) if presented else None
        if parsed is None:
            return None
        key_id, secret = parsed
        stored = await self._read(key_id, self._store.digest(key_id, secret))
        if stored is None:
            return None
        if stored.revoked_at is not None:
            return None
        if stored.expires_at is not None and stored.expires_at <= self._now():
            return None
        await self._touch(key_id)
        return Principal(
            key_id=stored.key_id,
            name=stored.name,
            scopes=stored.scopes,
            customers=stored.customers,
        )

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (this process's revocations take effect at once)."""
        self._accepted.drop(lambda stored: stored.key_id == key_id)

    async def _read(self, key_id: str, digest: bytes) -> StoredKey | None:
        """The key these (key id, secret hash) verify as, else None; read from
        the store when not read for them within the bound."""
        now = self._monotonic()
        cache_key = (key_id, digest)
        # Both caches are looked in on every path, whatever either holds.
        accepted = self._accepted.fresh(cache_key, now, self._cache_seconds)
        refused = self._refused.fresh(cache_key, now, self._cache_seconds)
        if accepted is not None:
            return accepted[0]
        if refused is not None:
            return None
        async with self._lookups:
            stored = await self._store.lookup(key_id)
        # One constant-time comparison on every path: an unknown id's
        # stand-in carries a hash no secret matches.
        verified = hmac.compare_digest(digest, stored.secret_hash) and stored.found
        if self._cache_seconds > 0:
            if verified:
                self._accepted.put(cache_key, stored, now)
            else:
                self._refused.put(cache_key, None, now)
        return stored if verified else None

    async def _touch(self, key_id: str) -> None:
        now = self._monotonic()
        last = self._touched.get(key_id)
        if last is not None and now - last < self._last_used_interval_seconds:
            return
        self._touched[key_id] = now
        if len(self._touched) > self._cache_entries_max:
            self._touched = {
                k: t for k, t in self._touched.items() if now - t < self._last_used_interval_seconds
            }
        try:
            await self._store.touch(key_id)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as error:
            # Bookkeeping only: the request goes on.
            log.warning("could not record the use of API key %s: %s", key_id, type(error).__name__)
