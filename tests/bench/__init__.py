"""Tests of the benchmarks and the chaos run."""
