"""One module per business process. Deterministic code only: no I/O, clock,
randomness or environment; activities do all of that."""
