"""What a chaos run does, drawn from its seed alone: the operations and the faults.

The plan is a pure function of (seed, options): the same seed gives the same
operation sequence and the same fault schedule, so a failing run is replayed
by its command line. What the system answers (an authorization approved or
declined, a card shipped or not) decides which of the plan's operations find
something to act on; the plan itself never depends on it.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Literal

# What the workload does, and how often (relative weights).
OPERATION_WEIGHTS: dict[str, int] = {
    "authorize": 30,
    "increment": 8,
    "clear": 18,
    "reverse": 6,
    "refund": 6,
    "force_post": 2,
    "topup_bank": 5,
    "topup_usdt": 3,
    "fx": 5,
    "card_virtual": 2,
    "card_physical": 2,
    "freeze": 3,
    "replace": 1,
    "dispute": 2,
    "represent": 2,
    "withdraw": 3,
    "controls": 2,
    "program_rules": 1,
}
OPERATION_KINDS = tuple(OPERATION_WEIGHTS)

# A purchase is small beside what each customer holds, so the wallets pay
# every clearing the issuer settles and the run's money stays in the model.
PURCHASE_MINOR_MIN = 100
PURCHASE_MINOR_MAX = 5_000
TOPUP_BANK_MINOR_MIN = 2_000
TOPUP_BANK_MINOR_MAX = 20_000
# Micro-USDT (6 decimals): 5 to 50 USDT.
TOPUP_USDT_MINOR_MIN = 5_000_000
TOPUP_USDT_MINOR_MAX = 50_000_000
FX_SELL_MINOR_MIN = 500
FX_SELL_MINOR_MAX = 10_000
WITHDRAW_MINOR_MIN = 500
WITHDRAW_MINOR_MAX = 5_000
# Of every VARIANTS_MAX, the share of a kind's variants (clear: equal, lower,
# higher; reverse: partial or full; fx: confirmed in time or after expiry;
# withdraw: the bank sends it, fails it, or sends it and returns it).
VARIANTS_MAX = 100

# Faults: what a provider does wrong, on the paths cardflow calls (never the
# sandbox's own /simulate routes, which stand for the outside world).
PROVIDER_FAULT_KINDS = ("error", "rate_limit", "latency", "timeout", "drop")
PROVIDER_FAULT_PATHS = (
    "/issuer/v1/cardholders",
    "/issuer/v1/cards",
    "/issuer/v1/disputes",
    "/issuer/v1/reports",
    "/issuer/v1/program",
    "/issuer/v1/authorizations",
    "/issuer/v1/transactions",
    "/kyc/v1/applicants",
    "/kyc/v1/checks",
    "/fx/v1/quotes",
    "/tron/v1/addresses",
    "/tron/v1/deposits",
    "/bank/v1/inbound_transfers",
    "/bank/v1/payouts",
    "/notify/v1/messages",
)
# A webhook window: for its length (in operations) the simulators deliver
# every event twice, or hold events and then release them newest first.
WEBHOOK_WINDOW_OPS_MIN = 5
WEBHOOK_WINDOW_OPS_MAX = 40
# A window also closes after this long: the operations that would close it
# may be waiting for the very webhooks it holds.
WEBHOOK_WINDOW_SECONDS_MAX = 20.0
WEBHOOK_WINDOWS_PER_THOUSAND_OPS = 25
# A provider's "resend" of an event it delivered long ago: this many times per
# thousand operations, reaching back up to RESEND_BACK_MAX deliveries (past
# any memory a card keeps of the events it has seen).
RESENDS_PER_THOUSAND_OPS = 20
RESEND_BACK_MAX = 2_000
# One customer does this share of the card's money operations: a card busy
# enough to see hundreds of events, the way a fleet or a merchant account
# does. Its operations run one at a time, so its share stays below one lane's
# worth of the default concurrency, and it does no slow process (an issued
# card, a top-up) that would make it the run's tail.
BUSY_CUSTOMER_SHARE = 0.08
BUSY_CUSTOMER_KINDS = frozenset(
    {"authorize", "increment", "clear", "reverse", "refund", "force_post", "represent"}
)
KILLABLE_WORKERS = ("worker-workflows", "worker-ledger", "worker-providers")

WebhookWindowKind = Literal["duplicate", "hold_reverse", "hold_forward"]
# Reversed release is the disorder that breaks most: drawn twice as often.
WEBHOOK_WINDOW_KINDS: tuple[WebhookWindowKind, ...] = (
    "duplicate",
    "hold_reverse",
    "hold_reverse",
    "hold_forward",
)
# A long run sends one card more events than any memory of them a card keeps
# (a burst of small force posts, a fleet card's day), half-way through.
BURST_OPERATIONS_MIN = 2_000
BURST_EVENTS = 520


@dataclass(frozen=True)
class Operation:
    number: int
    kind: str
    # Which customer acts (an index into the run's customers).
    customer: int
    amount_minor: int
    # A draw for the operation's own choices (which card, which variant).
    choice: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ProviderFault:
    # Armed when operation `at_operation` starts; fires for the next `times` calls.
    at_operation: int
    kind: str
    path_prefix: str
    times: int
    seconds: float
    status: int = 503


@dataclass(frozen=True)
class WebhookWindow:
    at_operation: int
    length_ops: int
    kind: WebhookWindowKind


@dataclass(frozen=True)
class Resend:
    at_operation: int
    back: int


@dataclass(frozen=True)
class Plan:
    seed: int
    customers: int
    operations: list[Operation]
    provider_faults: list[ProviderFault]
    webhook_windows: list[WebhookWindow]
    resends: list[Resend]
    # The order of the workers killed, one every --kill-every seconds.
    kill_order: list[str]
    # At which operation the gateway and the simulators are killed (once each).
    gateway_kill_at: int
    simulators_kill_at: int
    # Workers killed at these operations, beside the ones every --kill-every
    # seconds: however fast the traffic runs, a run kills a worker at least
    # this often (a short run on a fast machine may end before the timer's).
    worker_kills_at: dict[int, str] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)


def _amount(rng: random.Random, kind: str) -> int:
    if kind == "topup_bank":
        return rng.randint(TOPUP_BANK_MINOR_MIN, TOPUP_BANK_MINOR_MAX)
    if kind == "topup_usdt":
        return rng.randint(TOPUP_USDT_MINOR_MIN, TOPUP_USDT_MINOR_MAX)
    if kind == "fx":
        return rng.randint(FX_SELL_MINOR_MIN, FX_SELL_MINOR_MAX)
    if kind == "withdraw":
        return rng.randint(WITHDRAW_MINOR_MIN, WITHDRAW_MINOR_MAX)
    return rng.randint(PURCHASE_MINOR_MIN, PURCHASE_MINOR_MAX)


def plan_run(
    seed: int,
    *,
    operations: int,
    customers: int,
    fault_rate: float,
    kills: int,
) -> Plan:
    """The run's operations and faults, from `seed` alone."""
    if operations < 1 or customers < 1:
        raise ValueError("a run has at least one operation and one customer")
    rng = random.Random(seed)
    kinds = list(OPERATION_WEIGHTS)
    weights = list(OPERATION_WEIGHTS.values())
    planned = [
        Operation(
            number=number,
            kind=(kind := rng.choices(kinds, weights)[0]),
            customer=(
                0
                if rng.random() < BUSY_CUSTOMER_SHARE and kind in BUSY_CUSTOMER_KINDS
                else rng.randrange(customers)
            ),
            amount_minor=_amount(rng, kind),
            choice=rng.randrange(1 << 30),
        )
        for number in range(operations)
    ]
    if operations >= BURST_OPERATIONS_MIN:
        middle = operations // 2
        planned[middle] = Operation(middle, "burst", 0, BURST_EVENTS, rng.randrange(1 << 30))
        # Then the issuer re-sends that card's first money event, now more
        # than BURST_EVENTS events old.
        planned[middle + 1] = Operation(middle + 1, "resend_oldest", 0, 0, rng.randrange(1 << 30))
    faults_rng = random.Random(seed * 7919 + 1)
    provider_faults = [
        ProviderFault(
            at_operation=number,
            kind=(kind := faults_rng.choice(PROVIDER_FAULT_KINDS)),
            path_prefix=faults_rng.choice(PROVIDER_FAULT_PATHS),
            times=faults_rng.randint(1, 3),
            seconds={"rate_limit": 1.0, "latency": 0.5, "timeout": 35.0}.get(kind, 0.0),
            status=faults_rng.choice((500, 502, 503, 504)),
        )
        for number in range(operations)
        if faults_rng.random() < fault_rate
    ]
    windows: list[WebhookWindow] = []
    window_count = max(1, operations * WEBHOOK_WINDOWS_PER_THOUSAND_OPS // 1000)
    for _ in range(window_count):
        windows.append(
            WebhookWindow(
                at_operation=faults_rng.randrange(operations),
                length_ops=faults_rng.randint(WEBHOOK_WINDOW_OPS_MIN, WEBHOOK_WINDOW_OPS_MAX),
                kind=faults_rng.choice(WEBHOOK_WINDOW_KINDS),
            )
        )
    windows.sort(key=lambda window: window.at_operation)
    resends = sorted(
        (
            Resend(faults_rng.randrange(operations), faults_rng.randrange(RESEND_BACK_MAX))
            for _ in range(max(1, operations * RESENDS_PER_THOUSAND_OPS // 1000))
        ),
        key=lambda resend: resend.at_operation,
    )
    return Plan(
        seed=seed,
        customers=customers,
        operations=planned,
        provider_faults=provider_faults,
        webhook_windows=windows,
        resends=resends,
        kill_order=[faults_rng.choice(KILLABLE_WORKERS) for _ in range(kills)],
        gateway_kill_at=operations // 3,
        simulators_kill_at=(2 * operations) // 3,
        worker_kills_at=_worker_kills_at(seed, operations),
    )


# Workers killed at operations of the run (its quarters), whatever its pace.
WORKER_KILLS_BY_OPERATION = 3


def _worker_kills_at(seed: int, operations: int) -> dict[int, str]:
    """WORKER_KILLS_BY_OPERATION workers, at the run's quarters, from a random
    stream of their own (the rest of a seed's plan is as it was without them)."""
    rng = random.Random(f"{seed}/worker-kills")
    at = {
        operations * (n + 1) // (WORKER_KILLS_BY_OPERATION + 1)
        for n in range(WORKER_KILLS_BY_OPERATION)
    }
    return {number: rng.choice(KILLABLE_WORKERS) for number in sorted(at) if number > 0}
