"""Redaction of secrets in what a person or a log sees: the admin's pages, log records.

Stored dead letters keep the real values (a replay must publish them intact); only the
display and the logs go through ``redact``. Two rules, both from settings read at call time:

- ``DJCELERY_OPS_REDACT_KEYS``: a dict entry whose key contains one of these names
  (case-insensitive) has its value replaced by ``"[redacted]"``: keyword arguments,
  headers, nested dicts, at any depth.
- ``DJCELERY_OPS_REDACT_PATTERNS``: regular expressions over values (text, and integers
  read as their digits); each match is replaced by ``"[redacted]"``. A pattern with a group
  named ``luhn`` redacts a match only when that group's digits pass the Luhn check, so that
  card numbers go and order numbers stay.

``restore`` undoes a redaction where an operator left it untouched (the edit-and-replay
form shows redacted values and publishes the stored originals unless a new one is typed).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from djcelery_ops.conf import ops_settings

REDACTED = "[redacted]"


class UnrestoredPlaceholder(ValueError):
    """An edited value holds ``[redacted]`` where no stored original can replace it."""


def luhn_valid(digits: str) -> bool:
    numbers = [int(char) for char in digits if char.isdigit()]
    total = 0
    for position, number in enumerate(reversed(numbers)):
        if position % 2:
            number = number * 2 - 9 if number > 4 else number * 2
        total += number
    return bool(numbers) and total % 10 == 0


@functools.lru_cache(maxsize=8)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(pattern) for pattern in patterns)


@functools.lru_cache(maxsize=8)
def _lowered(keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(key.lower() for key in keys if key)


def _replace(match: re.Match[str]) -> str:
    if "luhn" in match.re.groupindex and not luhn_valid(match.group("luhn") or ""):
        return match.group(0)
    return REDACTED


def redact_text(text: str) -> str:
    """``text`` with every match of ``DJCELERY_OPS_REDACT_PATTERNS`` replaced."""
    for pattern in _compiled(tuple(ops_settings.REDACT_PATTERNS)):
        text = pattern.sub(_replace, text)
    return text


def is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    return _is_secret(key, tuple(ops_settings.REDACT_KEYS))


@functools.lru_cache(maxsize=4096)
def _is_secret(key: str, names: tuple[str, ...]) -> bool:
    # Cached: the same few keys (a log event's fields, a task's kwargs) come back each time.
    lowered = key.lower()
    return any(name in lowered for name in _lowered(names))


def redact(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists and tuples walked) with secrets replaced."""
    if isinstance(value, dict):
        return {
            key: REDACTED if is_secret_key(key) and item is not None else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value if redact_text(str(value)) == str(value) else REDACTED
    return value


def restore(edited: Any, original: Any) -> Any:
    """``edited`` with every part left as ``redact(original)`` showed it put back to the
    original; raises ``UnrestoredPlaceholder`` if ``[redacted]`` is left anywhere else."""
    restored = _restore(edited, original)
    if _holds_placeholder(restored) and not _holds_placeholder(original):
        raise UnrestoredPlaceholder(REDACTED)
    return restored


def _restore(edited: Any, original: Any) -> Any:
    if edited == redact(original):
        return original
    if isinstance(edited, dict) and isinstance(original, dict):
        return {key: _restore_entry(key, item, original) for key, item in edited.items()}
    if isinstance(edited, list) and isinstance(original, list | tuple):
        return [
            _restore(item, original[index] if index < len(original) else None)
            for index, item in enumerate(edited)
        ]
    return edited


def _restore_entry(key: Any, item: Any, original: dict[Any, Any]) -> Any:
    if item == REDACTED and key in original and is_secret_key(key):
        return original[key]  # shown redacted because of its key, left as shown
    return _restore(item, original.get(key))


def _holds_placeholder(value: Any) -> bool:
    if isinstance(value, str):
        return REDACTED in value
    items: Iterable[Any] = ()
    if isinstance(value, dict):
        items = value.values()
    elif isinstance(value, list | tuple):
        items = value
    return any(_holds_placeholder(item) for item in items)


__all__ = ["REDACTED", "UnrestoredPlaceholder", "redact", "redact_text", "restore"]
