"""Merchant category codes (MCCs), their named groups, and country codes, as
card controls and authorization rules name them."""

from __future__ import annotations

GROUP_PREFIX = "group:"
# Named MCC groups a control may name as "group:<name>".
MCC_GROUPS: dict[str, frozenset[str]] = {  # pragma: no mutate block
    "gambling": frozenset({"7800", "7801", "7802", "7995"}),
    "cash": frozenset({"6010", "6011"}),
    "quasi_cash": frozenset({"4829", "6050", "6051", "6540"}),
    "travel": frozenset({"4111", "4112", "4121", "4131", "4411", "4511", "4722", "7011", "7512"}),
    "dining": frozenset({"5811", "5812", "5813", "5814"}),
    "grocery": frozenset({"5411", "5422", "5441", "5451", "5499"}),
    "fuel": frozenset({"5541", "5542", "5983"}),
    "digital": frozenset({"5815", "5816", "5817", "5818"}),
    "adult": frozenset({"5967", "7273"}),
}


def groups_of(mcc: str) -> tuple[str, ...]:
    """The named groups an MCC belongs to, in name order."""
    return tuple(sorted(name for name, mccs in MCC_GROUPS.items() if mcc in mccs))


def names(entries: list[str], mcc: str) -> bool:
    """Whether an MCC list names `mcc`, itself or through one of its groups."""
    groups = {f"{GROUP_PREFIX}{group}" for group in groups_of(mcc)}
    return any(entry == mcc or entry in groups for entry in entries)


def mcc_entries(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    for entry in value:
        if entry.startswith(GROUP_PREFIX):
            if entry.removeprefix(GROUP_PREFIX) not in MCC_GROUPS:
                raise ValueError(
                    f"{entry!r} names no MCC group; groups: {', '.join(sorted(MCC_GROUPS))}"
                )
        elif len(entry) != 4 or not entry.isdigit():
            raise ValueError(f"{entry!r} is neither a 4-digit MCC nor group:<name>")
    return sorted(set(value))


def country_codes(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    for entry in value:
        if len(entry) != 2 or not entry.isascii() or not entry.isupper():
            raise ValueError(f"{entry!r} is not an ISO 3166-1 alpha-2 country code")
    return sorted(set(value))
