"""CLI starters, signal/update senders, the webhook and HTTP API gateway, the codec server."""
