"""Benchmarks that print figures; tests never assert on time."""
