"""Clients of the outside providers: one httpx.AsyncClient per provider,
errors classified once, at this boundary, for Temporal's retry policy."""
