"""The search attributes every cardflow workflow keeps current for operators.

They are registered on the Temporal server at start (`cardflow dev up`, the
test fixtures, the production stack) so the Web UI can filter on them.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
CARD_ID = SearchAttributeKey.for_keyword("CardId")
PROCESS_STATUS = SearchAttributeKey.for_keyword("ProcessStatus")
AMOUNT_MINOR = SearchAttributeKey.for_int("AmountMinor")
CURRENCY = SearchAttributeKey.for_keyword("Currency")
PROVIDER = SearchAttributeKey.for_keyword("Provider")

ALL_SEARCH_ATTRIBUTES: tuple[SearchAttributeKey, ...] = (  # type: ignore[type-arg]
    CUSTOMER_ID,
    CARD_ID,
    PROCESS_STATUS,
    AMOUNT_MINOR,
    CURRENCY,
    PROVIDER,
)


def dev_server_flags() -> list[str]:
    """`--search-attribute NAME=Type` flags for `temporal server start-dev`."""
    flags: list[str] = []
    for key in ALL_SEARCH_ATTRIBUTES:
        flags += ["--search-attribute", f"{key.name}={key._metadata_type}"]
    return flags
