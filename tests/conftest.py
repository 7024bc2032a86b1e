"""Shared fixtures live in tests/harness.py (the brute-force reference), imported as tests.harness."""
