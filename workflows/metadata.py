"""What an operator reads first about a process in the Web UI: the static
summary (one line) and static details (a short markdown) every start sets,
whoever starts it (a starter, the gateway, a parent workflow, a schedule).

The SDK (1.35) converts both with the data converter, codec included, like any
payload: they are encrypted in the history and read decoded through the codec
server. They still carry only ids, amounts and what the process waits for,
never a card number or personal data (names, e-mails, addresses), and neither
do search attributes, which are never encrypted.

Deterministic (no I/O): workflows use these for the children they start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# The Web UI shows the summary on one line; longer ones are cut.
SUMMARY_CHARS_MAX = 200


@dataclass(frozen=True)
class StartMetadata:
    """The static summary and details of one workflow start."""

    summary: str
    details: str


def start_metadata(
    summary: str, facts: Mapping[str, object | None], waits_for: str
) -> StartMetadata:
    """A one-line summary, and details listing the ids an operator needs
    (facts whose value is None are left out) and what the process waits for."""
    lines = [f"**{summary}**", ""]
    lines += [f"- {name}: `{value}`" for name, value in facts.items() if value is not None]
    lines += ["", f"Waits for: {waits_for}"]
    return StartMetadata(summary=summary[:SUMMARY_CHARS_MAX], details="\n".join(lines))
