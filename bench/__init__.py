"""Benchmarks: figures for the README, never timing asserts in tests."""
