"""Tests under a real systemd: a booted Debian 12 machine (see conftest.py)."""
