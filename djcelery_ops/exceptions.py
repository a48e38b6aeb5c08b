"""Exceptions a task raises to say how its failure should be handled."""

from __future__ import annotations


class TransientError(Exception):
    """A failure worth retrying (a timeout, a 503): OpsTask retries it with backoff."""


class PermanentError(Exception):
    """A failure no retry can fix (bad input, a 4xx): OpsTask dead-letters it at once."""
