"""A seeded chaos run: random traffic, faults and kills, then every invariant checked."""
