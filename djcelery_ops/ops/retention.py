"""Shared pieces of the management commands: ages and counts on the command line, batched
deletes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.core.management.base import CommandError
from django.db import transaction
from django.db.models import QuerySet

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# Six digits at most: 999999w still fits a timedelta; more would overflow, not fail cleanly.
_DURATION = re.compile(r"^(\d{1,6})([smhdw])$")


def parse_duration(text: str, option: str = "--older-than") -> timedelta:
    """``90s``, ``30m``, ``12h``, ``14d``, ``2w``; ValueError names the option otherwise."""
    match = _DURATION.match(text.strip())
    if not match or int(match[1]) == 0:
        raise ValueError(
            f"{option} {text!r} is not a positive duration such as 90s, 30m, 12h, 14d or 2w."
        )
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def duration_option(text: str, option: str = "--older-than") -> timedelta:
    """``parse_duration`` for a management command: bad input is a ``CommandError``."""
    try:
        return parse_duration(text, option)
    except ValueError as error:
        raise CommandError(str(error)) from error


def positive_int_option(text: Any, option: str) -> int:
    """A whole number of at least 1 for a management command; otherwise a ``CommandError``."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise CommandError(f"{option}: {text!r} is not a whole number.") from None
    if value < 1:
        raise CommandError(f"{option} must be at least 1, not {value}.")
    return value


def looks_like_duration(text: str) -> bool:
    return bool(_DURATION.match(text.strip()))


def delete_in_batches(rows: QuerySet[Any], batch_size: int) -> Iterator[int]:
    """Delete ``rows`` ``batch_size`` at a time, yielding the running count of deleted rows.

    Each batch re-applies the queryset's filters in its own transaction, so a row that
    stopped matching meanwhile (a dead letter replayed during a purge) is kept.
    """
    model_label = rows.model._meta.label
    deleted = 0
    while ids := list(rows.order_by("pk").values_list("pk", flat=True)[:batch_size]):
        with transaction.atomic():
            deleted += rows.filter(pk__in=ids).delete()[1].get(model_label, 0)
        yield deleted
