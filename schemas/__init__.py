"""Pydantic models shared by every layer: money, commands, results, events.

Nothing in this package performs I/O, so workflows may import it freely.
"""
