"""The `cardflow` command answers what it cannot do with a line that names
what was wrong and a non-zero exit code, never a traceback: a process that
does not exist, a number or a date out of range, a customer id that is not
a safe identifier, Temporal or the database out of reach."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from starters.cli import app
from starters.console import EXIT_UNAVAILABLE
from tests.conftest import free_port

# Nothing listens there: a command that gets as far as calling out fails.
NOWHERE = {
    "TEMPORAL_ADDRESS": "127.0.0.1:9",
    "DATABASE_URL": "postgresql://cardflow@127.0.0.1:9/cardflow",
    "CARDFLOW_PROVIDERS_URL": "http://127.0.0.1:9",
}
HUGE = str(10**20)


def cardflow(*args: str, env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    """The `cardflow` command as a user runs it (its real entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "starters.cli", *args],
        env={**os.environ, "CARDFLOW_HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_error(completed: subprocess.CompletedProcess[str]) -> str:
    assert completed.returncode not in (0, None), completed
    assert "Traceback" not in completed.stderr, completed.stderr
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stderr
    return lines[0]


def refused_before_calling_anyone(args: list[str]) -> str:
    """What the command prints refusing `args`, with nothing listening anywhere."""
    answer = CliRunner().invoke(app, args, env=NOWHERE)
    assert isinstance(answer.exception, SystemExit), answer.exception
    assert answer.exit_code == 2, answer.output
    return answer.output


def _not_found_commands() -> dict[str, list[str]]:
    nope = uuid.uuid4().hex[:10]
    return {
        "status": ["status", f"ping/{nope}"],
        "card-show": ["card", "show", f"card_{nope}"],
        "card-freeze": ["card", "freeze", f"card_{nope}"],
        "card-activate": ["card", "activate", f"req-{nope}"],
        "kyc-review": [
            "kyc",
            "review",
            f"c-{nope}",
            "--decision",
            "approve",
            "--reason",
            "documents fine",
            "--operator",
            "ops",
        ],  # fmt: skip
        "fx-confirm": ["fx", "confirm", f"fx-{nope}"],
        "fx-status": ["fx", "status", f"fx-{nope}"],
        "withdrawal-status": ["withdrawal", "status", f"w-{nope}"],
        "withdrawal-review": [
            "withdrawal",
            "review",
            f"w-{nope}",
            "--approve",
            "--reason",
            "called the customer",
            "--operator",
            "ops",
        ],  # fmt: skip
        "closure-status": ["closure", "status", f"c-{nope}"],
        "closure-decide": [
            "closure",
            "decide",
            f"c-{nope}",
            "--retry",
            "--reason",
            "the customer gave another account",
            "--operator",
            "ops",
        ],  # fmt: skip
        "dispute-evidence": [
            "dispute",
            "evidence",
            f"txn_{nope}",
            "--type",
            "receipt",
            "--description",
            "paid",
        ],  # fmt: skip
        "dispute-submit": ["dispute", "submit", f"txn_{nope}"],
        "topup-status": ["topup", "status", f"bank/ref-{nope}"],
        "cashback-refund": ["cashback", "refund", f"txn_{nope}", f"rf-{nope}", "100"],
        "reconcile-status": ["reconcile", "status", "--date", "2024-01-02"],
    }


NOT_FOUND = _not_found_commands()


@pytest.mark.parametrize("args", NOT_FOUND.values(), ids=NOT_FOUND.keys())
def test_a_process_that_does_not_exist_is_one_line_naming_it(
    workflow_env: Any, tmp_path: Path, args: list[str]
) -> None:
    target = workflow_env.client.service_client.config.target_host
    completed = cardflow(*args, env={"TEMPORAL_ADDRESS": target}, home=tmp_path)
    line = one_line_error(completed)
    assert completed.returncode == 1
    assert "not found" in line
    subject = args[2] if args[0] not in ("status", "reconcile") else args[-1]
    assert subject.split("/")[-1] in line, line


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        (["ledger", "history", "customer:c-1:wallet:USD", "--after", HUGE], "--after"),
        (["card", "limits", "card_x", "--per-day", HUGE], "--per-day"),
        (["simulate", "authorize", "card_x", HUGE], "'amount_minor'"),
        (["cashback", "refund", "txn_x", "rf-1", HUGE], "'amount_minor'"),
        (
            ["dispute", "open", "txn_x", "--customer-id", "c-1", "--reason", "fraudulent"]
            + ["--amount-minor", HUGE],
            "--amount-minor",
        ),
        (
            ["fx", "quote", "c-1", "--sell", "USD", "--buy", "EUR", "--sell-amount", HUGE],
            "--sell-amount",
        ),
        (["card", "reschedule", "req-1", "2024-13-45"], "'delivery_date'"),
        (["card", "reschedule", "req-1", "9999-12-31"], "delivery_date"),
        (["ledger", "balance", "x", "--as-of", "0001-01-01T00:00:00+01:00"], "--as-of"),
        (["ledger", "balance", "x", "--as-of", "9999-12-31T23:00:00-05:00"], "--as-of"),
    ],
    ids=[
        "history-cursor",
        "limit",
        "simulated-amount",
        "refund-amount",
        "dispute-amount",
        "fx-amount",
        "delivery-date",
        "delivery-date-out-of-range",
        "instant-year-1",
        "instant-year-9999",
    ],
)
def test_a_number_or_date_out_of_range_is_refused_naming_the_argument(
    args: list[str], argument: str
) -> None:
    assert argument in refused_before_calling_anyone(args)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["card", "freeze", "card_x", "--reason", "lost\x1b[2J"], "reason"),
        (["dispute", "withdraw", "txn_x", "--by", "nobody"], "by"),
        (
            ["withdrawal", "start", "c-1", "100", "--iban", "DE89370400440532013001"]
            + ["--name", "Ada Lovelace"],
            "destination.bank.iban",
        ),
        (
            ["withdrawal", "start", "c-1", "0", "--iban", "DE89370400440532013000"]
            + ["--name", "Ada Lovelace"],
            "amount_minor",
        ),
        (
            ["withdrawal", "start", "c-1", "100", "--address", "T-not-an-address"],
            "destination.usdt.address",
        ),
        (
            ["withdrawal", "start", "c-1", "100", "--address", "TTxaiGudVhUKHmM1qk14JzqZvkJFzHRrZy"]
            + ["--iban", "DE89370400440532013000"],
            "--address",
        ),
        (
            ["withdrawal", "review", "w-1", "--reject", "--reason", "no", "--operator", "o"],
            "reason",
        ),
        (
            ["closure", "start", "c-1", "--iban", "DE89370400440532013001"]
            + ["--name", "Ada Lovelace"],
            "destination.bank.iban",
        ),
        (["closure", "start", "c-1", "--iban", "DE89370400440532013000"], "destination.bank.name"),
        (["closure", "start", "c-1", "--address", "T-not-an-address"], "destination.usdt.address"),
        (
            ["closure", "start", "c-1", "--address", "TTxaiGudVhUKHmM1qk14JzqZvkJFzHRrZy"]
            + ["--iban", "DE89370400440532013000"],
            "--address",
        ),
        (["closure", "start", "c-1"], "--iban"),
        (
            ["closure", "start", "c-1", "--iban", "DE89370400440532013000"]
            + ["--name", "Ada Lovelace", "--reason", ""],
            "reason",
        ),
        (
            ["closure", "decide", "c-1", "--retry", "--reason", "new account", "--operator", "o"]
            + ["--iban", "GB82WEST12345698765433", "--name", "Ada Lovelace"],
            "destination.bank.iban",
        ),
        (
            ["closure", "decide", "c-1", "--abandon", "--reason", "no", "--operator", "o"],
            "reason",
        ),
        (["kyc", "tier", "c-1", "platinum", "--reason", "seen", "--operator", "o"], "tier"),
        (["kyc", "tier", "c-1", "basic", "--reason", "", "--operator", "o"], "reason"),
    ],
    ids=[
        "card-reason",
        "withdrawn-by",
        "withdrawal-iban",
        "withdrawal-amount",
        "withdrawal-address",
        "withdrawal-address-and-iban",
        "withdrawal-reason",
        "closure-iban",
        "closure-name",
        "closure-address",
        "closure-address-and-iban",
        "closure-no-destination",
        "closure-reason",
        "closure-decide-iban",
        "closure-decide-reason",
        "kyc-tier",
        "kyc-tier-reason",
    ],
)
def test_a_value_its_model_refuses_is_refused_naming_it_before_calling_anyone(
    args: list[str], field: str
) -> None:
    assert f"{field}: " in refused_before_calling_anyone(args)


def test_an_out_of_range_cursor_is_one_line_from_the_real_command(tmp_path: Path) -> None:
    completed = cardflow(
        "ledger", "history", "customer:c-1:wallet:USD", "--after", HUGE, env=NOWHERE, home=tmp_path
    )
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert "--after" in completed.stderr


@pytest.mark.parametrize("customer_id", [".", ".."])
@pytest.mark.parametrize(
    "args",
    [
        ["statement", "show", "{id}", "2024-01"],
        ["billing", "run", "--period", "2024-01", "--customer", "{id}"],
        ["card", "issue", "{id}"],
        [
            "onboard",
            "--customer-id",
            "{id}",
            "--first-name",
            "Ada",
            "--last-name",
            "Byron",
            "--date-of-birth",
            "1985-12-10",
            "--country",
            "GBR",
            "--email",
            "ada@example.com",
        ],  # fmt: skip
        ["topup", "bank", "{id}", "100"],
        ["topup", "address", "{id}"],
        ["topup", "deposit", "{id}", "100"],
        ["fx", "quote", "{id}", "--sell", "USD", "--buy", "EUR", "--sell-amount", "100"],
        ["withdrawal", "start", "{id}", "100", "--iban", "DE89370400440532013000", "--name", "A"],
        ["closure", "start", "{id}", "--iban", "DE89370400440532013000", "--name", "A"],
        ["closure", "status", "{id}"],
        ["closure", "decide", "{id}", "--retry", "--reason", "fine", "--operator", "o"],
        ["cashback", "segment", "{id}", "vip"],
        ["dispute", "open", "txn_x", "--customer-id", "{id}", "--reason", "fraudulent"],
        ["kyc", "review", "{id}", "--decision", "approve", "--reason", "fine", "--operator", "o"],
        ["simulate", "deposit", "{id}", "100"],
        [
            "apikey",
            "create",
            "--name",
            "partner",
            "--scope",
            "processes:read",
            "--customer",
            "{id}",
        ],
        [
            "topup",
            "review",
            "bank/ref-1",
            "--approve",
            "--reason",
            "assigned",
            "--operator",
            "ops",
            "--customer",
            "{id}",
        ],  # fmt: skip
    ],
    ids=lambda args: "-".join(a for a in args[:2] if not a.startswith("{")),
)
def test_a_customer_id_that_is_not_a_safe_identifier_is_refused_naming_it(
    args: list[str], customer_id: str
) -> None:
    typed = [customer_id if arg == "{id}" else arg for arg in args]
    output = refused_before_calling_anyone(typed)
    assert "customer" in output.lower(), output


@pytest.mark.parametrize("born", ["1800-01-01", "2999-01-01"])
def test_an_implausible_birth_date_is_refused_naming_it(born: str) -> None:
    output = refused_before_calling_anyone(
        [
            "onboard",
            "--customer-id",
            "c-1",
            "--first-name",
            "Ada",
            "--last-name",
            "Byron",
            "--date-of-birth",
            born,
            "--country",
            "GBR",
            "--email",
            "ada@example.com",
        ]  # fmt: skip
    )
    assert "date_of_birth" in output


@pytest.mark.parametrize(
    "args",
    [
        ["status", "ping/x"],
        ["ledger", "history", "customer:c-1:wallet:USD"],
        ["kyc", "tier", "c-1", "basic", "--reason", "seen", "--operator", "o"],
    ],
)
def test_temporal_or_the_database_out_of_reach_is_one_line_naming_where(
    tmp_path: Path, args: list[str]
) -> None:
    port = free_port()  # nothing listens there
    unreachable = {
        **NOWHERE,
        "TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
        "DATABASE_URL": f"postgresql://cardflow@127.0.0.1:{port}/cardflow",
    }
    completed = cardflow(*args, env=unreachable, home=tmp_path)
    line = one_line_error(completed)
    assert completed.returncode == EXIT_UNAVAILABLE
    assert line.startswith("cardflow: cannot") and f"127.0.0.1:{port}" in line.replace(
        "', ", ":"
    ).replace("('", ""), line


def _parameters(command: Any, path: str = "cardflow") -> Any:
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from _parameters(sub, f"{path} {name}")
    else:
        for parameter in command.params:
            yield path, parameter


# Numbers a command hands to a model that bounds them and names them itself.
BOUNDED_BY_THEIR_MODEL = {
    ("cardflow apikey create", "expires_in_days"),  # NewApiKey: 1..KEY_LIFETIME_DAYS_MAX
    ("cardflow apikey rotate", "overlap_hours"),  # checked: 0..ROTATION_OVERLAP_HOURS_MAX
}


def test_every_number_a_command_takes_is_bounded() -> None:
    unbounded = []
    for path, parameter in _parameters(typer.main.get_command(app)):
        annotation = parameter.type_descriptor.annotation
        if annotation not in (int, float) or (path, parameter.name) in BOUNDED_BY_THEIR_MODEL:
            continue
        if parameter.min is None or parameter.max is None or parameter.max > 2**63 - 1:
            unbounded.append(f"{path} {parameter.name}")
    assert unbounded == []


# Customer ids a command hands to a model that checks them as CustomerId and names the option.
CHECKED_BY_THEIR_MODEL = {("cardflow apikey create", "customer")}  # NewApiKey.customers


def test_every_customer_id_a_command_takes_is_checked_as_it_is_parsed() -> None:
    from starters.arguments import parse_customer_id

    unchecked = [
        f"{path} {parameter.name}"
        for path, parameter in _parameters(typer.main.get_command(app))
        if parameter.name in ("customer_id", "customer")
        and parameter.type_descriptor.parameter_info.parser is not parse_customer_id
        and (path, parameter.name) not in CHECKED_BY_THEIR_MODEL
    ]
    assert unchecked == []


def test_kyc_tier_moves_a_known_customer_and_names_an_unknown_one(
    database_url: str, tmp_path: Path
) -> None:
    customer_id = f"c-{uuid.uuid4().hex[:10]}"
    env = {**NOWHERE, "DATABASE_URL": database_url}
    move = ["kyc", "tier", customer_id, "enhanced", "--reason", "funds seen", "--operator", "jane"]
    unknown = cardflow(*move, env=env, home=tmp_path)
    assert one_line_error(unknown) == f"no customer {customer_id}"

    async def save() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute(
                "INSERT INTO customers (customer_id, first_name, last_name, date_of_birth, country)"
                " VALUES ($1, 'Ada', 'Lovelace', '1990-12-10', 'GBR')",
                customer_id,
            )
        finally:
            await connection.close()

    asyncio.run(save())
    moved = cardflow(*move, env=env, home=tmp_path)
    assert (moved.returncode, moved.stdout) == (0, f"{customer_id}: enhanced (was standard)\n")
    again = cardflow(*move, env=env, home=tmp_path)
    assert again.stdout == f"{customer_id}: enhanced (unchanged)\n"
