"""Shared pytest set-up: the e2e tests run on the real reactor through pytest-twisted."""
