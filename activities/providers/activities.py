"""Temporal activities over the provider clients, for the providers task queue.

Each worker process holds one client per provider for its lifetime. Errors
arrive already classified by the client boundary (activities/providers/http.py).
"""

from __future__ import annotations

import logging

import asyncpg
from temporalio.common import MetricMeter
from temporalio.exceptions import ApplicationError

from activities.customers import CustomerNotFound, CustomerStore
from activities.providers.bank import BankClient
from activities.providers.cards import CardActivities
from activities.providers.fx import FxClient
from activities.providers.http import ProviderClient
from activities.providers.issuer import IssuerClient
from activities.providers.kyc import KycClient
from activities.providers.notify import NotifyClient
from activities.providers.quotes import QuoteActivities
from activities.providers.settlement_files import SettlementFileClient
from activities.providers.telegram import TelegramBotClient
from activities.providers.tron import TronClient
from activities.queues import provider_activity
from schemas.customers import Notification, NotificationReceipt
from schemas.kyc import KycApplicant, KycCheck, KycDocument, KycLink
from schemas.notify import Channel
from schemas.onboarding import ApplicantRequest, CheckRequest, DocumentUpload, LinkRequest
from schemas.providers import BANK, FX, ISSUER, KYC, NOTIFY, TELEGRAM, TRON

KYC_CREATE_APPLICANT = "kyc.create_applicant"
KYC_ADD_DOCUMENT = "kyc.add_document"
KYC_START_CHECK = "kyc.start_check"
KYC_VERIFICATION_LINK = "kyc.verification_link"
NOTIFY_CUSTOMER = "notifications.send"
# What Telegram answers for a chat it will never deliver to: 400 no such chat,
# 403 the user blocked the bot (or deleted their account).
TELEGRAM_CHAT_REFUSED = (400, 403)

log = logging.getLogger("cardflow.providers")


class ProviderClients:
    """One client per provider, for one worker process."""

    def __init__(
        self,
        providers_base_url: str,
        *,
        telegram_bot_token: str | None = None,
        telegram_api_url: str | None = None,
    ) -> None:
        self.kyc = KycClient(f"{providers_base_url}/{KYC}")
        self.notify = NotifyClient(f"{providers_base_url}/{NOTIFY}")
        self.issuer = IssuerClient(f"{providers_base_url}/{ISSUER}")
        self.settlement_files = SettlementFileClient(f"{providers_base_url}/{ISSUER}")
        self.fx = FxClient(f"{providers_base_url}/{FX}")
        self.bank = BankClient(f"{providers_base_url}/{BANK}")
        self.tron = TronClient(f"{providers_base_url}/{TRON}")
        # The customers' bot sends their Telegram notifications itself; without
        # its token, none can be sent (the Bot API is the simulators' unless set).
        self.telegram: TelegramBotClient | None = None
        if telegram_bot_token is not None:
            self.telegram = TelegramBotClient(
                telegram_api_url or f"{providers_base_url}/{TELEGRAM}", telegram_bot_token
            )

    def _all(self) -> tuple[ProviderClient, ...]:
        clients = (
            self.kyc,
            self.notify,
            self.issuer,
            self.settlement_files,
            self.fx,
            self.bank,
            self.tron,
        )
        return clients + ((self.telegram,) if self.telegram is not None else ())

    def time_calls_on(self, meter: MetricMeter) -> None:
        """Time the calls made outside activities (the gateway's) on `meter`;
        inside an activity a call is timed on the activity's meter."""
        for client in self._all():
            client.meter = meter

    async def aclose(self) -> None:
        for client in self._all():
            await client.aclose()


class ProviderActivities:
    def __init__(self, clients: ProviderClients, pool: asyncpg.Pool) -> None:
        self.clients = clients
        self.pool = pool
        self.customers = CustomerStore(pool)

    @provider_activity(KYC_CREATE_APPLICANT)
    async def create_applicant(self, request: ApplicantRequest) -> KycApplicant:
        profile = request.profile
        return await self.clients.kyc.create_applicant(
            external_customer_id=profile.customer_id,
            first_name=profile.first_name,
            last_name=profile.last_name,
            date_of_birth=profile.date_of_birth,
            country=profile.country,
            idempotency_key=request.key,
        )

    @provider_activity(KYC_ADD_DOCUMENT)
    async def add_document(self, upload: DocumentUpload) -> KycDocument:
        return await self.clients.kyc.add_document(
            upload.applicant_id,
            document_type=upload.document.type,
            country=upload.document.country,
            file_name=upload.document.file_name,
            idempotency_key=upload.key,
        )

    @provider_activity(KYC_START_CHECK)
    async def start_check(self, request: CheckRequest) -> KycCheck:
        return await self.clients.kyc.start_check(request.applicant_id, idempotency_key=request.key)

    @provider_activity(KYC_VERIFICATION_LINK)
    async def verification_link(self, request: LinkRequest) -> KycLink:
        return await self.clients.kyc.create_link(request.applicant_id, idempotency_key=request.key)

    @provider_activity(NOTIFY_CUSTOMER)
    async def notify_customer(self, notification: Notification) -> NotificationReceipt:
        """Send on each channel the customer prefers, once per channel per key."""
        try:
            profile = await self.customers.get(notification.customer_id)
        except CustomerNotFound as error:
            raise ApplicationError(
                str(error), type="CustomerNotFound", non_retryable=True
            ) from None
        addresses = {
            Channel.EMAIL: profile.email,
            Channel.PUSH: profile.push_token,
            Channel.TELEGRAM: profile.telegram_chat_id,
        }
        message_ids: list[str] = []
        channels: list[Channel] = []
        for channel in profile.preferred_channels:
            address = addresses[channel]
            if not address:
                continue
            key = f"{notification.key}/{channel.value}"
            if channel is Channel.TELEGRAM:
                sent = await self._telegram(key, int(address), notification)
                if sent is not None:
                    message_ids.append(sent)
                    channels.append(channel)
                continue
            message = await self.clients.notify.send_message(
                channel=channel,
                to=address,
                body=notification.body,
                idempotency_key=key,
                subject=notification.subject if channel is Channel.EMAIL else None,
                dedupe_key=key,
            )
            message_ids.append(message.id)
            channels.append(channel)
        return NotificationReceipt(key=notification.key, message_ids=message_ids, channels=channels)

    async def _telegram(self, key: str, chat_id: int, notification: Notification) -> str | None:
        """Send through the customers' bot, once per key: a send already made is
        found in telegram_messages. The Bot API has no idempotency key, so a
        send whose answer was lost is made again (at least once, never lost).

        A chat Telegram refuses for good (403: the user blocked the bot or
        left; 400: no such chat) is skipped, not failed: the customer's
        choice must not fail the process that tells them (None)."""
        sent = await self.pool.fetchval(
            "SELECT message_id FROM telegram_messages WHERE dedupe_key = $1", key
        )
        if sent is None:
            if self.clients.telegram is None:
                raise ApplicationError(
                    "the customer prefers Telegram and no bot token is configured"
                    " (CARDFLOW_TELEGRAM_BOT_TOKEN)",
                    type="TelegramNotConfigured",
                    non_retryable=True,
                )
            text = f"{notification.subject}\n\n{notification.body}"
            try:
                sent = await self.clients.telegram.send_message(chat_id, text, idempotency_key=key)
            except ApplicationError as error:
                details = error.details[0] if error.details else {}
                status = details.get("status") if isinstance(details, dict) else None
                if error.non_retryable and status in TELEGRAM_CHAT_REFUSED:
                    log.warning("Telegram refused chat %s (%s): not told there", chat_id, status)
                    return None
                raise
            await self.pool.execute(
                "INSERT INTO telegram_messages (dedupe_key, chat_id, message_id)"
                " VALUES ($1, $2, $3) ON CONFLICT (dedupe_key) DO NOTHING",
                key,
                chat_id,
                sent,
            )
        return f"tg_{chat_id}_{sent}"

    def all(self) -> list[object]:
        return [
            self.create_applicant,
            self.add_document,
            self.start_check,
            self.verification_link,
            self.notify_customer,
            *CardActivities(self.clients.issuer, self.pool).all(),
            *QuoteActivities(self.clients.fx).all(),
        ]
