"""Text and JSON every supported database accepts, and text of a bounded size.

PostgreSQL refuses NUL (``\\x00``) in ``text`` and in ``jsonb`` strings and keys, and a
lone surrogate (``\\ud800``, which Python strings can hold) cannot be encoded at all. A
failure record carries whatever a task raised or was called with, so both are escaped
visibly here (``\\u0000``), before they reach the database. This module is part of the
shared core: the dead-letter and job-run parts both use it.
"""

from __future__ import annotations

import re
from typing import Any

from djcelery_ops.conf import ops_settings

# NUL, and UTF-16 surrogates (never valid alone in a Python str meant for UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def storable_text(text: str) -> str:
    """``text`` with NUL and lone surrogates written as visible ``\\uXXXX`` escapes."""
    return _UNSTORABLE.sub(_escape, text) if _UNSTORABLE.search(text) else text


def storable_json(value: Any) -> tuple[Any, bool]:
    """JSON-ready ``value`` with every string and key made storable; and whether one changed."""
    changed = False

    def walk(item: Any) -> Any:
        nonlocal changed
        if isinstance(item, str):
            clean = storable_text(item)
            changed = changed or clean is not item
            return clean
        if isinstance(item, dict):
            return {walk(str(key)): walk(inner) for key, inner in item.items()}
        if isinstance(item, list | tuple):
            return [walk(inner) for inner in item]
        return item

    return walk(value), changed


def capped_text(text: str, limit: int, what: str = "text") -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes: head and tail kept, a marker between.

    The result never exceeds ``limit`` bytes (so capping again changes nothing) and says
    how many bytes were cut. ``text`` must be storable (no lone surrogates).
    """
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    marker = f"\n[... {what} cut by djcelery_ops: {len(raw)} bytes in all, {{}} cut ...]\n"
    room = max(limit - len(marker.format(len(raw))), 0)
    head = raw[: room * 2 // 3].decode("utf-8", "ignore")
    tail = raw[len(raw) - (room - room * 2 // 3) :].decode("utf-8", "ignore") if room else ""
    kept = len(head.encode()) + len(tail.encode())
    return head + marker.format(len(raw) - kept) + tail


def bounded_message(text: str) -> str:
    """An exception message as stored: storable, and capped by its setting."""
    limit = ops_settings.DEAD_LETTER_MAX_MESSAGE_BYTES
    return capped_text(storable_text(text), limit, "exception message")
