"""The simulated issuer's state: typed documents in the simulator store, its
clock, its ids, its webhooks, and the card network's currency conversion.

Everything lives in context.store, so a restart of the simulator loses
nothing; ids are readable and stable ("card_000001").
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, localcontext
from typing import Any, Generic, NoReturn, TypeVar

import httpx
from fastapi import HTTPException
from pydantic import BaseModel

from schemas.money import MINOR_UNIT_EXPONENT, Currency
from schemas.units import DAY_SECONDS
from simulators.framework.context import SimulatorContext
from simulators.issuer_models import (
    Authorization,
    Card,
    Cardholder,
    Dispute,
    Fee,
    FundingDeposit,
    FundingTransfer,
    ProgramBalanceTransaction,
    Reversal,
    Transaction,
)

NAME = "issuer"

Model = TypeVar("Model", bound=BaseModel)

# Tests move the issuer's clock forward (settlement days, expiry dates)
# through the admin API instead of waiting. Set behind before anything
# happens (tests, the demo), what the issuer does now is stamped on a day
# that has ended, the only kind of day cardflow reconciles.
CLOCK_OFFSET_SECONDS_MAX = 10 * 365 * DAY_SECONDS
CLOCK_BEHIND_SECONDS_MAX = 31 * DAY_SECONDS
# A transaction the issuer settles late appears in the settlement report of
# a later day than the one it happened on, at most this many days later.
SETTLEMENT_DELAY_DAYS_MAX = 31

# The card network's reference rates, in US dollars per unit of each
# currency. Fixed so that every conversion in a test is predictable.
NETWORK_RATE_USD_PER_UNIT: dict[Currency, Decimal] = {
    Currency.USD: Decimal("1"),
    Currency.EUR: Decimal("1.08"),
    Currency.GBP: Decimal("1.27"),
    Currency.JPY: Decimal("0.0067"),
    Currency.USDT: Decimal("1"),
}
RATE_DECIMAL_PLACES = 10
# Enough digits for a 13-digit amount times an 11-digit rate, scaled.
CONVERSION_PRECISION_DIGITS = 50


@dataclass(frozen=True)
class Collection(Generic[Model]):
    """One kind of document: its store kind, id prefix and model."""

    kind: str
    prefix: str
    label: str
    model: type[Model]


CARDHOLDERS = Collection("issuer.cardholders", "ch", "cardholder", Cardholder)
CARDS = Collection("issuer.cards", "card", "card", Card)
AUTHORIZATIONS = Collection("issuer.authorizations", "auth", "authorization", Authorization)
TRANSACTIONS = Collection("issuer.transactions", "txn", "transaction", Transaction)
REVERSALS = Collection("issuer.reversals", "rev", "reversal", Reversal)
FEES = Collection("issuer.fees", "fee", "fee", Fee)
DEPOSITS = Collection("issuer.deposits", "fund", "funding deposit", FundingDeposit)
DISPUTES = Collection("issuer.disputes", "dp", "dispute", Dispute)
PROGRAM_FUNDINGS = Collection("issuer.program_fundings", "pfd", "program funding", FundingTransfer)
PROGRAM_BALANCE_TRANSACTIONS = Collection(
    "issuer.program_balance_transactions",
    "pbt",
    "program balance transaction",
    ProgramBalanceTransaction,
)


def conflict(message: str) -> NoReturn:
    """409: the request is well formed but the resource's state refuses it."""
    raise HTTPException(status_code=409, detail=message)


def unprocessable(location: list[str], message: str, value: Any) -> NoReturn:
    """422 shaped like FastAPI's own, naming the field, for checks a model cannot make."""
    raise HTTPException(
        status_code=422,
        detail=[{"type": "value_error", "loc": location, "msg": message, "input": value}],
    )


# Concurrent real-time requests in flight to cardflow's gateway, spread over
# several connection pools: httpcore matches each request against every
# connection of its pool (and polls each idle one), so one pool of 64 costs
# the simulator's event loop more per request the busier it is.
GATEWAY_POOLS = 8
GATEWAY_CONNECTIONS_PER_POOL_MAX = 8


class IssuerState:
    """Typed access to the issuer's documents, clock, options and webhooks."""

    def __init__(self, context: SimulatorContext) -> None:
        self.context = context
        # Connection pools to cardflow's gateway for every real-time request,
        # as a card network keeps its links to an issuer processor open.
        self._gateway_pools: list[httpx.AsyncClient] = []
        self._gateway_turn = itertools.count()
        self._listeners: dict[str, list[Callable[[Any], None]]] = defaultdict(list)

    def gateway_http(self) -> httpx.AsyncClient:
        """The gateway connection pool whose turn it is."""
        if not self._gateway_pools:
            tls = httpx.create_ssl_context()  # read once, shared by the pools
            self._gateway_pools = [
                httpx.AsyncClient(
                    verify=tls,
                    limits=httpx.Limits(
                        max_connections=GATEWAY_CONNECTIONS_PER_POOL_MAX,
                        max_keepalive_connections=GATEWAY_CONNECTIONS_PER_POOL_MAX,
                    ),
                )
                for _ in range(GATEWAY_POOLS)
            ]
        return self._gateway_pools[next(self._gateway_turn) % GATEWAY_POOLS]

    # ----- clock ---------------------------------------------------------------

    def now(self) -> datetime:
        offset_seconds = self.option_int(
            "clock_offset_seconds", 0, -CLOCK_BEHIND_SECONDS_MAX, CLOCK_OFFSET_SECONDS_MAX
        )
        return datetime.now(UTC) + timedelta(seconds=offset_seconds)

    def now_iso(self) -> str:
        return self.now().isoformat()

    def today(self) -> date:
        return self.now().date()

    def late_settlement_date(self, created_at: str) -> date | None:
        """The later day whose settlement report lists a transaction made at
        `created_at` while the issuer settles `settlement_delay_days` late;
        None when it settles the day it happened."""
        delay_days = self.option_int("settlement_delay_days", 0, 0, SETTLEMENT_DELAY_DAYS_MAX)
        if delay_days == 0:
            return None
        happened = datetime.fromisoformat(created_at).astimezone(UTC).date()
        return happened + timedelta(days=delay_days)

    # ----- options -------------------------------------------------------------

    def option_int(self, name: str, default: int, low: int, high: int) -> int:
        """An integer option set through the admin API; a bad value counts as the default."""
        value = self.context.option(NAME, name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return default
        return value

    def option_str(self, name: str, default: str, allowed: frozenset[str]) -> str:
        value = self.context.option(NAME, name, default)
        return value if isinstance(value, str) and value in allowed else default

    # ----- documents -----------------------------------------------------------

    def new_id(self, collection: Collection[Model]) -> str:
        return f"{collection.prefix}_{self.context.store.next_number(collection.kind):06d}"

    def find(self, collection: Collection[Model], doc_id: str) -> Model | None:
        found = self.context.store.get(collection.kind, doc_id)
        return None if found is None else collection.model.model_validate(found)

    def load(self, collection: Collection[Model], doc_id: str) -> Model:
        """The document, or a 404 naming what was looked for."""
        found = self.find(collection, doc_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no {collection.label} {doc_id}")
        return found

    def all(self, collection: Collection[Model]) -> list[Model]:
        """Every document of the collection, oldest first."""
        return [
            collection.model.model_validate(doc) for doc in self.context.store.list(collection.kind)
        ]

    def save(self, collection: Collection[Model], document: Model) -> Model:
        body = document.model_dump(mode="json")
        self.context.store.put(collection.kind, str(body["id"]), body)
        for listener in self._listeners.get(collection.kind, ()):
            listener(document)
        return document

    def on_save(self, collection: Collection[Model], listener: Callable[[Model], None]) -> None:
        """Call `listener` with each document of `collection` saved from now
        on, right after it is stored: what one part of the issuer records
        (a settled transaction, a fee) moves what another keeps (the
        program's balance), whichever route recorded it."""
        self._listeners[collection.kind].append(listener)

    # ----- webhooks -------------------------------------------------------------

    def emit(self, event_type: str, document: BaseModel) -> None:
        """A webhook to cardflow: every state change is announced, at least once."""
        self.context.outbox.emit(NAME, event_type, document.model_dump(mode="json"))


# ----- the card network's currency conversion ------------------------------------------


def network_rate(source: Currency, target: Currency) -> Decimal:
    """Units of `target` per unit of `source`, rounded to RATE_DECIMAL_PLACES."""
    if source == target:
        return Decimal(1)
    with localcontext() as decimal_context:
        decimal_context.prec = CONVERSION_PRECISION_DIGITS
        rate = NETWORK_RATE_USD_PER_UNIT[source] / NETWORK_RATE_USD_PER_UNIT[target]
        return rate.quantize(Decimal(1).scaleb(-RATE_DECIMAL_PLACES), rounding=ROUND_HALF_EVEN)


def convert_minor(amount_minor: int, source: Currency, target: Currency, rate: Decimal) -> int:
    """`amount_minor` of `source` in minor units of `target`, half up: the
    rate given (the one recorded on the authorization) is the one used, so the
    recorded rate always reproduces the converted amount."""
    if source == target:
        return amount_minor
    shift = MINOR_UNIT_EXPONENT[target] - MINOR_UNIT_EXPONENT[source]
    with localcontext() as decimal_context:
        decimal_context.prec = CONVERSION_PRECISION_DIGITS
        converted = Decimal(amount_minor) * rate * Decimal(1).scaleb(shift)
        return int(converted.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def convert_back_minor(
    card_amount_minor: int, card_currency: Currency, merchant_currency: Currency, rate: Decimal
) -> int:
    """The merchant-currency amount behind a card-currency amount, given the
    authorization's rate (merchant to card); informational, rounded half up."""
    if card_currency == merchant_currency:
        return card_amount_minor
    with localcontext() as decimal_context:
        decimal_context.prec = CONVERSION_PRECISION_DIGITS
        inverse = Decimal(1) / rate
    return convert_minor(card_amount_minor, card_currency, merchant_currency, inverse)


def major_to_minor(amount_major: int, currency: Currency) -> int:
    return amount_major * int(10 ** MINOR_UNIT_EXPONENT[currency])
