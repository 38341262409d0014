"""The `/v1` calls the bot makes, with its API key (scopes telegram:link,
customers:read, processes:start): the bot sees and does only what the API
lets any client see and do."""

from __future__ import annotations

from typing import Any

import httpx

# The bot answers a person: an API call slower than this is reported, not waited on.
API_TIMEOUT_SECONDS = 10.0
FEED_LINES = 10
# How far back a payment disputed from the list is looked for among the customer's.
OWNED_PAYMENTS_SEEN = 100


class NotLinked(Exception):
    """This Telegram user is linked to no customer."""


class ApiRefused(Exception):
    """The API refused the call; `detail` says why, for the person."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class CardflowApi:
    def __init__(self, base_url: str, api_key: str) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=API_TIMEOUT_SECONDS,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _json(self, answer: httpx.Response) -> Any:
        if answer.is_success:
            return answer.json()
        try:
            error = answer.json()
            code, detail = str(error.get("code")), str(error.get("detail"))
        except ValueError:
            code, detail = "unknown", answer.text[:200]
        raise ApiRefused(answer.status_code, code, detail)

    async def link(self, code: str, telegram_user_id: int) -> str:
        """Redeem a link code for this user; the customer's id."""
        answer = await self._http.post(
            "/v1/telegram/links", json={"code": code, "telegram_user_id": telegram_user_id}
        )
        return str((await self._json(answer))["customer_id"])

    async def customer_of(self, telegram_user_id: int) -> str:
        answer = await self._http.get(f"/v1/telegram/links/{telegram_user_id}")
        if answer.status_code == 404:
            raise NotLinked(str(telegram_user_id))
        return str((await self._json(answer))["customer_id"])

    async def customer(self, customer_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._json(
            await self._http.get(f"/v1/customers/{customer_id}")
        )
        return found

    async def feed(self, customer_id: str) -> list[dict[str, Any]]:
        answer = await self._http.get(
            f"/v1/customers/{customer_id}/transactions", params={"limit": FEED_LINES}
        )
        found: list[dict[str, Any]] = (await self._json(answer))["data"]
        return found

    async def owns_card(self, customer_id: str, card_id: str) -> bool:
        """A button's data comes from the user's Telegram client, which can
        send any: the card must be this customer's."""
        cards = (await self.customer(customer_id))["cards"]
        return any(card["card_id"] == card_id for card in cards)

    async def owns_payment(self, customer_id: str, transaction_id: str) -> bool:
        """The transaction is one of the customer's recent card payments (the
        list the bot shows, and more)."""
        answer = await self._http.get(
            f"/v1/customers/{customer_id}/transactions",
            params={"kind": ["clearing", "force_post"], "limit": OWNED_PAYMENTS_SEEN},
        )
        entries = (await self._json(answer))["data"]
        return any(entry.get("transaction_id") == transaction_id for entry in entries)

    async def card_action(self, card_id: str, action: str, idempotency_key: str) -> str:
        """Freeze or unfreeze; the same key acts once however often it is sent."""
        answer = await self._http.post(
            f"/v1/cards/{card_id}/actions",
            json={"action": action, "reason": "the customer, in Telegram"},
            headers={"Idempotency-Key": idempotency_key},
        )
        return str((await self._json(answer))["result"])

    async def sign_up(self, answers: dict[str, Any], idempotency_key: str) -> str:
        """A person new to cardflow: their customer, linked to them, onboarding."""
        answer = await self._http.post(
            "/v1/telegram/signups", json=answers, headers={"Idempotency-Key": idempotency_key}
        )
        return str((await self._json(answer))["workflow_id"])

    async def issue_card(
        self, customer_id: str, address: dict[str, str], idempotency_key: str
    ) -> str:
        """A virtual card for the customer; the card-issue process's id."""
        answer = await self._http.post(
            "/v1/cards",
            json={"customer_id": customer_id, "kind": "virtual", "address": address},
            headers={"Idempotency-Key": idempotency_key},
        )
        return str((await self._json(answer))["workflow_id"])

    async def dispute(
        self, customer_id: str, transaction_id: str, reason: str, statement: str, key: str
    ) -> str:
        """Open the transaction's dispute with the customer's statement and
        submit it; the dispute's stage. Both calls are keyed by `key`."""
        opened = await self._http.post(
            "/v1/disputes",
            json={
                "transaction_id": transaction_id,
                "customer_id": customer_id,
                "reason": reason,
                "evidence": [{"type": "cardholder_statement", "description": statement}],
            },
            headers={"Idempotency-Key": key},
        )
        await self._json(opened)
        submitted = await self._http.post(
            f"/v1/disputes/{transaction_id}/submit",
            json={},
            headers={"Idempotency-Key": f"{key}-submit"},
        )
        return str((await self._json(submitted)).get("stage", "submitted"))

    async def set_channels(self, customer_id: str, channels: list[str]) -> list[str]:
        """The channels the customer is told on (a PUT: the same twice is one)."""
        answer = await self._http.put(
            f"/v1/customers/{customer_id}/notification-channels",
            json={"preferred_channels": channels},
        )
        return list((await self._json(answer))["preferred_channels"])

    async def pending_authentications(self, customer_id: str) -> list[dict[str, Any]]:
        """The customer's 3-D Secure challenges waiting for a code, newest first."""
        answer = await self._http.get(f"/v1/customers/{customer_id}/authentications")
        found: list[dict[str, Any]] = (await self._json(answer))["data"]
        return found

    async def answer_authentication(
        self, card_id: str, authentication_id: str, code: str, idempotency_key: str
    ) -> dict[str, Any]:
        """Answer a challenge with the customer's code; what it did."""
        answer = await self._http.post(
            f"/v1/cards/{card_id}/authentications/{authentication_id}/answer",
            json={"code": code},
            headers={"Idempotency-Key": idempotency_key},
        )
        reply: dict[str, Any] = await self._json(answer)
        return reply
