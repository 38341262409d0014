"""Client of the card issuer's API: cardholders, cards and their lifecycle,
program funding, settlement reports and disputes, plus the sandbox calls the
demo and the tests use to play the card network, merchants and carriers.

Every mutating call takes an idempotency key, so Temporal may retry any of
them safely; errors are classified by ProviderClient for the retry policy.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import BaseModel

from activities.providers.http import ProviderClient
from schemas.issuer import (
    Address,
    Authentication,
    Authorization,
    AuthorizationPage,
    Card,
    Cardholder,
    CardPage,
    CardState,
    CardType,
    Dispute,
    DisputeEvidence,
    DisputeOutcome,
    DisputeReason,
    FundingDeposit,
    FundingSummary,
    Merchant,
    ProgramBalance,
    ProgramBalanceList,
    ProgramBalanceTransaction,
    ProgramBalanceTransactionPage,
    ProgramFunding,
    ProgramFundingPage,
    ReissueReason,
    RevealToken,
    Reversal,
    SettlementReport,
    ShippingRequest,
    ShippingStatus,
    Transaction,
    TransactionPage,
)
from schemas.money import Currency
from schemas.providers import ISSUER
from schemas.reconciliation import SettlementReportPage

CARDS_PAGE_SIZE_MAX = 100
# Authorizations and transactions of a card, per page; so are the program's
# balance transactions and fundings.
PAGE_SIZE_MAX = 100
# Fundings under one reference are a handful (a retried funding at most).
FUNDING_PAGES_MAX = 10
# Beyond this many movements a balance's history is read page by page
# (program_balance_transactions_page).
BALANCE_TRANSACTION_PAGES_MAX = 100


def _wire(model: BaseModel) -> dict[str, Any]:
    """A request part as the issuer takes it: what is unset is left out."""
    return model.model_dump(mode="json", exclude_none=True)


def _evidence(items: list[DisputeEvidence]) -> list[dict[str, Any]]:
    # submitted_at is the issuer's to stamp, never ours to send.
    return [_wire(item.model_copy(update={"submitted_at": None})) for item in items]


class IssuerClient(ProviderClient):
    provider = ISSUER

    # ----- cardholders and cards ---------------------------------------------

    async def create_cardholder(
        self,
        *,
        first_name: str,
        last_name: str,
        email: str,
        address: Address,
        phone_number: str | None = None,
        idempotency_key: str,
    ) -> Cardholder:
        body: dict[str, Any] = {
            "first_name": first_name,
            "last_name": last_name,
            "email": email,
            "address": _wire(address),
        }
        if phone_number is not None:
            body["phone_number"] = phone_number
        return await self.call(
            "POST", "/v1/cardholders", Cardholder, json=body, idempotency_key=idempotency_key
        )

    async def get_cardholder(self, cardholder_id: str) -> Cardholder:
        return await self.call("GET", f"/v1/cardholders/{cardholder_id}", Cardholder)

    async def update_cardholder(
        self, cardholder_id: str, *, address: Address, idempotency_key: str
    ) -> Cardholder:
        """The cardholder with a new billing address; cards already issued keep
        the shipping address they had."""
        return await self.call(
            "PATCH",
            f"/v1/cardholders/{cardholder_id}",
            Cardholder,
            json={"address": _wire(address)},
            idempotency_key=idempotency_key,
        )

    async def create_card(
        self,
        *,
        cardholder_id: str,
        card_type: CardType,
        currency: Currency,
        shipping: ShippingRequest | None = None,
        idempotency_key: str,
    ) -> Card:
        """A virtual card comes back open; a physical one pending fulfillment."""
        body: dict[str, Any] = {
            "cardholder_id": cardholder_id,
            "type": card_type.value,
            "currency": currency.value,
        }
        if shipping is not None:
            body["shipping"] = _wire(shipping)
        return await self.call(
            "POST", "/v1/cards", Card, json=body, idempotency_key=idempotency_key
        )

    async def get_card(self, card_id: str) -> Card:
        return await self.call("GET", f"/v1/cards/{card_id}", Card)

    async def list_cards(
        self,
        cardholder_id: str,
        *,
        limit: int = CARDS_PAGE_SIZE_MAX,
        starting_after: str | None = None,
    ) -> CardPage:
        params: dict[str, Any] = {"cardholder_id": cardholder_id, "limit": limit}
        if starting_after is not None:
            params["starting_after"] = starting_after
        return await self.call("GET", "/v1/cards", CardPage, params=params)

    async def update_card_state(
        self,
        card_id: str,
        *,
        state: CardState,
        reason: str | None = None,
        idempotency_key: str,
    ) -> Card:
        """Pause (PAUSED), resume (OPEN) or close (CLOSED); a move the card's
        state does not allow is a ProviderConflict."""
        body: dict[str, Any] = {"state": state.value}
        if reason is not None:
            body["reason"] = reason
        return await self.call(
            "PATCH", f"/v1/cards/{card_id}", Card, json=body, idempotency_key=idempotency_key
        )

    async def activate_card(self, card_id: str, *, idempotency_key: str) -> Card:
        """Opens a delivered physical card; before delivery, a ProviderConflict."""
        return await self.call(
            "POST", f"/v1/cards/{card_id}/activate", Card, idempotency_key=idempotency_key
        )

    async def reissue_card(
        self,
        card_id: str,
        *,
        reason: ReissueReason,
        shipping: ShippingRequest | None = None,
        idempotency_key: str,
    ) -> Card:
        """The new card; the old one is closed, with replaced_by pointing here."""
        body: dict[str, Any] = {"reason": reason.value}
        if shipping is not None:
            body["shipping"] = _wire(shipping)
        return await self.call(
            "POST",
            f"/v1/cards/{card_id}/reissue",
            Card,
            json=body,
            idempotency_key=idempotency_key,
        )

    async def reschedule_delivery(
        self, card_id: str, *, delivery_date: date, idempotency_key: str
    ) -> Card:
        """A later delivery date; once the card is shipped, a ProviderConflict."""
        return await self.call(
            "POST",
            f"/v1/cards/{card_id}/shipping/reschedule",
            Card,
            json={"delivery_date": delivery_date.isoformat()},
            idempotency_key=idempotency_key,
        )

    # ----- money --------------------------------------------------------------

    async def create_reveal_token(self, card_id: str, *, idempotency_key: str) -> RevealToken:
        """A token for the holder's device to fetch the card's number, expiry
        and CVV from the issuer directly, once, within its life (60 s at most)."""
        return await self.call(
            "POST",
            f"/v1/cards/{card_id}/reveal_tokens",
            RevealToken,
            idempotency_key=idempotency_key,
        )

    async def get_funding_summary(self) -> FundingSummary:
        """The issuer's account of funding deposits, settled spend and fees."""
        return await self.call("GET", "/v1/program/funding", FundingSummary)

    async def deposit_program_funding(
        self, *, amount_minor: int, currency: Currency, reference: str, idempotency_key: str
    ) -> FundingDeposit:
        return await self.call(
            "POST",
            "/v1/program/funding/deposits",
            FundingDeposit,
            json={"amount_minor": amount_minor, "currency": currency.value, "reference": reference},
            idempotency_key=idempotency_key,
        )

    # ----- the program's prefunded balance -----------------------------------------

    async def program_balances(self) -> list[ProgramBalance]:
        """What the program has prefunded at the issuer and not yet spent, in
        every currency; the issuer declines authorizations above it itself."""
        listed = await self.call("GET", "/v1/program/balances", ProgramBalanceList)
        return listed.data

    async def program_balance_transactions_page(
        self, currency: Currency, *, limit: int | None = None, starting_after: str | None = None
    ) -> ProgramBalanceTransactionPage:
        """One page of the balance's movements in `currency`, oldest first."""
        params: dict[str, Any] = {"currency": currency.value}
        if limit is not None:
            params["limit"] = limit
        if starting_after is not None:
            params["starting_after"] = starting_after
        return await self.call(
            "GET", "/v1/program/balance_transactions", ProgramBalanceTransactionPage, params=params
        )

    async def program_balance_transactions(
        self, currency: Currency
    ) -> list[ProgramBalanceTransaction]:
        """Every movement of the balance in `currency`, oldest first, each
        signed: its opening, fundings, refunds and won disputes positive,
        clearings, force posts and fees negative."""
        movements: list[ProgramBalanceTransaction] = []
        starting_after: str | None = None
        for _ in range(BALANCE_TRANSACTION_PAGES_MAX):
            page = await self.program_balance_transactions_page(
                currency, limit=PAGE_SIZE_MAX, starting_after=starting_after
            )
            movements += page.data
            if not page.has_more:
                return movements
            starting_after = page.data[-1].id
        raise RuntimeError(
            f"the program's {currency.value} balance moved more than"
            f" {BALANCE_TRANSACTION_PAGES_MAX * PAGE_SIZE_MAX} times:"
            " read it with program_balance_transactions_page"
        )

    async def fund_program(
        self, *, amount_minor: int, currency: Currency, reference: str, idempotency_key: str
    ) -> ProgramFunding:
        """Announces the program's wire of `amount_minor` to the issuer,
        `reference` being the program's own id for it. Pending until the
        issuer credits it (program.funding.credited); credited at once when
        the issuer needs no lead time."""
        return await self.call(
            "POST",
            "/v1/program/fundings",
            ProgramFunding,
            json={"amount_minor": amount_minor, "currency": currency.value, "reference": reference},
            idempotency_key=idempotency_key,
        )

    async def get_program_funding(self, funding_id: str) -> ProgramFunding:
        return await self.call("GET", f"/v1/program/fundings/{funding_id}", ProgramFunding)

    async def program_fundings_by_reference(self, reference: str) -> list[ProgramFunding]:
        """Every funding made with `reference`, oldest first (none when a
        funding that went unanswered never reached the issuer)."""
        fundings: list[ProgramFunding] = []
        params: dict[str, Any] = {"reference": reference, "limit": PAGE_SIZE_MAX}
        for _ in range(FUNDING_PAGES_MAX):
            page = await self.call("GET", "/v1/program/fundings", ProgramFundingPage, params=params)
            fundings += page.data
            if not page.has_more:
                return fundings
            params["starting_after"] = page.data[-1].id
        raise RuntimeError(
            f"more than {FUNDING_PAGES_MAX * PAGE_SIZE_MAX} program fundings share a reference"
        )

    # ----- settlement ------------------------------------------------------------------

    async def get_settlement_report(self, settlement_date: date) -> SettlementReport:
        """Every clearing, force post, refund, chargeback, reversal and fee of the UTC date."""
        return await self.call(
            "GET",
            f"/v1/reports/settlement/{settlement_date.isoformat()}",
            SettlementReport,
            params={"format": "json"},
        )

    async def get_settlement_report_page(
        self, settlement_date: date, *, cursor: str | None, limit: int
    ) -> SettlementReportPage:
        """One page of the day's settlement records, oldest first; its
        next_cursor reads the next page (None: the last page)."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        return await self.call(
            "GET",
            f"/v1/reports/settlement/{settlement_date.isoformat()}/pages",
            SettlementReportPage,
            params=params,
        )

    async def get_authorization(self, authorization_id: str) -> Authorization:
        return await self.call("GET", f"/v1/authorizations/{authorization_id}", Authorization)

    async def list_authorizations(
        self, card_id: str, *, limit: int = PAGE_SIZE_MAX, starting_after: str | None = None
    ) -> AuthorizationPage:
        params: dict[str, Any] = {"card_id": card_id, "limit": limit}
        if starting_after is not None:
            params["starting_after"] = starting_after
        return await self.call("GET", "/v1/authorizations", AuthorizationPage, params=params)

    async def list_transactions(
        self, card_id: str, *, limit: int = PAGE_SIZE_MAX, starting_after: str | None = None
    ) -> TransactionPage:
        params: dict[str, Any] = {"card_id": card_id, "limit": limit}
        if starting_after is not None:
            params["starting_after"] = starting_after
        return await self.call("GET", "/v1/transactions", TransactionPage, params=params)

    async def get_transaction(self, transaction_id: str) -> Transaction:
        return await self.call("GET", f"/v1/transactions/{transaction_id}", Transaction)

    # ----- disputes -------------------------------------------------------------

    async def open_dispute(
        self,
        *,
        transaction_id: str,
        reason: DisputeReason,
        evidence: list[DisputeEvidence],
        amount_minor: int | None = None,
        idempotency_key: str,
    ) -> Dispute:
        """Disputes all of a settled transaction, or `amount_minor` of it."""
        body: dict[str, Any] = {
            "transaction_id": transaction_id,
            "reason": reason.value,
            "evidence": _evidence(evidence),
        }
        if amount_minor is not None:
            body["amount_minor"] = amount_minor
        return await self.call(
            "POST", "/v1/disputes", Dispute, json=body, idempotency_key=idempotency_key
        )

    async def get_dispute(self, dispute_id: str) -> Dispute:
        return await self.call("GET", f"/v1/disputes/{dispute_id}", Dispute)

    async def add_dispute_evidence(
        self, dispute_id: str, *, evidence: list[DisputeEvidence], idempotency_key: str
    ) -> Dispute:
        return await self.call(
            "POST",
            f"/v1/disputes/{dispute_id}/evidence",
            Dispute,
            json={"evidence": _evidence(evidence)},
            idempotency_key=idempotency_key,
        )

    async def withdraw_dispute(self, dispute_id: str, *, idempotency_key: str) -> Dispute:
        return await self.call(
            "POST", f"/v1/disputes/{dispute_id}/withdraw", Dispute, idempotency_key=idempotency_key
        )

    # ----- sandbox: the network, merchants and carriers -------------------------------

    async def simulate_shipping(
        self,
        card_id: str,
        *,
        status: ShippingStatus | None = None,
        carrier: str | None = None,
        idempotency_key: str,
    ) -> Card:
        """Sandbox: moves the shipment to `status`, or one normal step on."""
        body: dict[str, Any] = {}
        if status is not None:
            body["status"] = status.value
        if carrier is not None:
            body["carrier"] = carrier
        return await self.call(
            "POST",
            f"/v1/simulate/cards/{card_id}/shipping",
            Card,
            json=body,
            idempotency_key=idempotency_key,
        )

    async def simulate_authorization(
        self,
        *,
        card_id: str,
        amount_minor: int,
        currency: Currency,
        merchant: Merchant,
        partial_approval_capable: bool = False,
        idempotency_key: str,
        authentication_id: str | None = None,
    ) -> Authorization:
        """Sandbox: a merchant authorization in the merchant's currency, which the
        issuer puts to cardflow's gateway in real time; after 3-D Secure it
        carries the authentication's id."""
        body: dict[str, Any] = {
            "card_id": card_id,
            "amount_minor": amount_minor,
            "currency": currency.value,
            "merchant": _wire(merchant),
            "partial_approval_capable": partial_approval_capable,
        }
        if authentication_id is not None:
            body["authentication_id"] = authentication_id
        return await self.call(
            "POST",
            "/v1/simulate/authorize",
            Authorization,
            json=body,
            idempotency_key=idempotency_key,
        )

    async def simulate_authentication(
        self,
        *,
        card_id: str,
        amount_minor: int,
        currency: Currency,
        merchant: Merchant,
        idempotency_key: str,
    ) -> Authentication:
        """Sandbox: a checkout's 3-D Secure authentication, which the issuer
        puts to cardflow's gateway in real time."""
        return await self.call(
            "POST",
            "/v1/simulate/authentications",
            Authentication,
            json={
                "card_id": card_id,
                "amount_minor": amount_minor,
                "currency": currency.value,
                "merchant": _wire(merchant),
            },
            idempotency_key=idempotency_key,
        )

    async def get_authentication(self, authentication_id: str) -> Authentication:
        return await self.call("GET", f"/v1/authentications/{authentication_id}", Authentication)

    async def report_challenge_outcome(
        self, authentication_id: str, outcome: str, *, idempotency_key: str
    ) -> Authentication:
        """Tell the issuer how the cardholder answered a 3-D Secure challenge."""
        return await self.call(
            "POST",
            f"/v1/authentications/{authentication_id}/challenge_response",
            Authentication,
            json={"outcome": outcome},
            idempotency_key=idempotency_key,
        )

    async def simulate_increment(
        self, authorization_id: str, *, amount_minor: int, idempotency_key: str
    ) -> Authorization:
        """Sandbox: the merchant asks to hold `amount_minor` (card currency) more."""
        return await self.call(
            "POST",
            f"/v1/simulate/authorizations/{authorization_id}/increment",
            Authorization,
            json={"amount_minor": amount_minor},
            idempotency_key=idempotency_key,
        )

    async def simulate_advice(
        self,
        authorization_id: str,
        *,
        pending_amount_minor: int,
        reason: str | None = None,
        idempotency_key: str,
    ) -> Authorization:
        """Sandbox: the network says the authorization now holds `pending_amount_minor`."""
        body: dict[str, Any] = {"pending_amount_minor": pending_amount_minor}
        if reason is not None:
            body["reason"] = reason
        return await self.call(
            "POST",
            f"/v1/simulate/authorizations/{authorization_id}/advice",
            Authorization,
            json=body,
            idempotency_key=idempotency_key,
        )

    async def simulate_clearing(
        self,
        authorization_id: str,
        *,
        amount_minor: int | None = None,
        final: bool = False,
        idempotency_key: str,
    ) -> Transaction:
        """Sandbox: a clearing of `amount_minor` (card currency; all that is held
        when left out); `final` releases what stays held."""
        body: dict[str, Any] = {"final": final}
        if amount_minor is not None:
            body["amount_minor"] = amount_minor
        return await self.call(
            "POST",
            f"/v1/simulate/authorizations/{authorization_id}/clear",
            Transaction,
            json=body,
            idempotency_key=idempotency_key,
        )

    async def simulate_reversal(
        self, authorization_id: str, *, amount_minor: int | None = None, idempotency_key: str
    ) -> Reversal:
        """Sandbox: gives back `amount_minor` of what is held (all when left out)."""
        body: dict[str, Any] = {} if amount_minor is None else {"amount_minor": amount_minor}
        return await self.call(
            "POST",
            f"/v1/simulate/authorizations/{authorization_id}/reverse",
            Reversal,
            json=body,
            idempotency_key=idempotency_key,
        )

    async def simulate_expiry(
        self, authorization_id: str, *, idempotency_key: str
    ) -> Authorization:
        return await self.call(
            "POST",
            f"/v1/simulate/authorizations/{authorization_id}/expire",
            Authorization,
            idempotency_key=idempotency_key,
        )

    async def simulate_refund(
        self,
        *,
        card_id: str,
        amount_minor: int,
        currency: Currency,
        merchant: Merchant,
        idempotency_key: str,
        refunded_transaction_id: str | None = None,
    ) -> Transaction:
        body = self._merchant_money(card_id, amount_minor, currency, merchant)
        if refunded_transaction_id is not None:
            body["refunded_transaction_id"] = refunded_transaction_id
        return await self.call(
            "POST",
            "/v1/simulate/refunds",
            Transaction,
            json=body,
            idempotency_key=idempotency_key,
        )

    async def simulate_force_post(
        self,
        *,
        card_id: str,
        amount_minor: int,
        currency: Currency,
        merchant: Merchant,
        idempotency_key: str,
    ) -> Transaction:
        return await self.call(
            "POST",
            "/v1/simulate/force_posts",
            Transaction,
            json=self._merchant_money(card_id, amount_minor, currency, merchant),
            idempotency_key=idempotency_key,
        )

    async def simulate_dispute_decision(
        self,
        dispute_id: str,
        *,
        outcome: DisputeOutcome,
        note: str | None = None,
        idempotency_key: str,
    ) -> Dispute:
        body: dict[str, Any] = {"outcome": outcome.value}
        if note is not None:
            body["note"] = note
        return await self.call(
            "POST",
            f"/v1/simulate/disputes/{dispute_id}/decide",
            Dispute,
            json=body,
            idempotency_key=idempotency_key,
        )

    async def simulate_program_funding_credited(
        self, funding_id: str, *, idempotency_key: str
    ) -> ProgramFunding:
        """Sandbox: the program's wire arrives now; a funding already credited
        is a ProviderConflict."""
        return await self.call(
            "POST",
            f"/v1/simulate/program/fundings/{funding_id}/credit",
            ProgramFunding,
            idempotency_key=idempotency_key,
        )

    @staticmethod
    def _merchant_money(
        card_id: str, amount_minor: int, currency: Currency, merchant: Merchant
    ) -> dict[str, Any]:
        return {
            "card_id": card_id,
            "amount_minor": amount_minor,
            "currency": currency.value,
            "merchant": _wire(merchant),
        }
