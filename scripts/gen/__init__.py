"""Generators of committed files (reference docs, the dashboard, upgrade fixtures); each has a --check a test runs."""
