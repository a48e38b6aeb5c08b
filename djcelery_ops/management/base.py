"""Shared pieces of the management commands: ages, counts and ids on the command line."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import CommandError

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
