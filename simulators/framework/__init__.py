"""What every simulator shares: a persistent store, fault injection, Stripe-style
idempotency, and signed at-least-once webhooks (Standard Webhooks)."""

from simulators.framework.context import SimulatorContext
from simulators.framework.faults import Fault, FaultRegistry
from simulators.framework.store import Store
from simulators.framework.webhooks import WebhookOutbox

__all__ = ["Fault", "FaultRegistry", "SimulatorContext", "Store", "WebhookOutbox"]
