"""The dispute's scenarios: a disputed purchase won, and one contested and lost."""

from __future__ import annotations

from temporalio.client import Client

from starters.scenarios_cards import funded_virtual_card
from workers.settings import Settings


async def _dispute(client: Client, settings: Settings, outcome: str, contested: bool) -> str:
    """A funded customer's virtual card; a purchase disputed, credited provisionally, decided."""
    from schemas.issuer import DisputeOutcome
    from starters.dispute import dispute_purchase

    customer_id, _, card_id = await funded_virtual_card(client, settings)
    return await dispute_purchase(
        client,
        settings,
        customer_id,
        card_id,
        amount_minor=2_000,
        outcome=DisputeOutcome(outcome),
        contested=contested,
    )


async def dispute_won(client: Client, settings: Settings) -> str:
    """A purchase disputed, credited provisionally, then won: the issuer pays."""
    return await _dispute(client, settings, "won", contested=False)


async def dispute_lost(client: Client, settings: Settings) -> str:
    """A purchase disputed and credited provisionally; the merchant contests, the
    customer answers (pre-arbitration), the dispute is lost and the credit reversed."""
    return await _dispute(client, settings, "lost", contested=True)
