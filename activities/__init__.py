"""The only I/O layer: the ledger (asyncpg + SQL migrations), provider clients
(httpx + tenacity) and notifications."""
