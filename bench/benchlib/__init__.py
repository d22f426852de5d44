"""Helpers for bench/run.py: processes, load generators, and the three setups."""
