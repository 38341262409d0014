"""The outside providers cardflow talks to, by the name used in URLs and settings."""

from __future__ import annotations

ISSUER = "issuer"
KYC = "kyc"
FX = "fx"
TRON = "tron"
BANK = "bank"
NOTIFY = "notify"

PROVIDERS: tuple[str, ...] = (ISSUER, KYC, FX, TRON, BANK, NOTIFY)
