"""The outside providers cardflow talks to, by the name used in URLs and settings."""

from __future__ import annotations

ISSUER = "issuer"
KYC = "kyc"
FX = "fx"
TRON = "tron"
BANK = "bank"
NOTIFY = "notify"
# The Telegram Bot API: cardflow's own bot, not a webhook-sending provider.
TELEGRAM = "telegram"

PROVIDERS: tuple[str, ...] = (ISSUER, KYC, FX, TRON, BANK, NOTIFY)
