"""Which parts of a dead letter are encrypted at rest (``djcelery_ops.crypto``), and
opening them again for a replay or for the admin.

Sealed when ``DJCELERY_OPS_ENCRYPTION_KEYS`` is set: ``args``, ``kwargs``, the encoded call
(``call_body``), and in ``options`` the headers, the never-decoded message (body and
headers), the exact call kept for a refused row and the workflow (its signatures carry
the next tasks' arguments). The rest of ``options`` (queue, routing, ids) stays clear: the
replay and the admin filter on it. ``Replay.edits`` seals the args and kwargs an operator
typed. Spool files are sealed whole (``deadletter.spool``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django.db.models import Q

from djcelery_ops.crypto import (
    ENVELOPE_KEY,
    TEXT_PREFIX,
    PayloadKeyError,
    is_sealed,
    reseal,
    reseal_text,
    seal,
    sealed_with_first_key,
    unseal,
    unseal_text,
)
from djcelery_ops.deadletter.models import DeadLetter

if TYPE_CHECKING:
    from djcelery_ops.deadletter.entries import Letter

SEALED_OPTIONS = (
    "headers",
    "message_headers",
    "raw_body",
    "original_payload_json",  # store.ORIGINAL_PAYLOAD_KEY
    "workflow",  # record.WORKFLOW_KEY
)
SEALED_EDITS = ("args", "kwargs")
# A skip reason of replay (``Outcome.skipped``): the row stays pending.
SKIP_KEY_MISSING = "payload encrypted with a key not in DJCELERY_OPS_ENCRYPTION_KEYS"


def seal_options(options: dict[str, Any]) -> dict[str, Any]:
    return {key: seal(value) if key in SEALED_OPTIONS else value for key, value in options.items()}


def open_options(options: dict[str, Any] | None) -> dict[str, Any]:
    return {key: unseal(value) for key, value in (options or {}).items()}


def seal_edits(edits: dict[str, Any]) -> dict[str, Any]:
    return {
        field: {side: seal(value) for side, value in edit.items()}
        if field in SEALED_EDITS and isinstance(edit, dict)
        else edit
        for field, edit in edits.items()
    }


def open_edits(edits: dict[str, Any] | None) -> dict[str, Any]:
    return {
        field: {side: unseal(value) for side, value in edit.items()}
        if isinstance(edit, dict)
        else edit
        for field, edit in (edits or {}).items()
    }


@dataclasses.dataclass(frozen=True)
class Payload:
    """A dead letter's payload in clear, in memory only."""

    args: Any
    kwargs: Any
    options: dict[str, Any]
    call_body: str


def open_payload(letter: DeadLetter | Letter) -> Payload:
    """The letter's payload in clear; ``PayloadKeyError`` when no configured key opens it."""
    return Payload(
        args=unseal(letter.args),
        kwargs=unseal(letter.kwargs),
        options=open_options(letter.options),
        call_body=unseal_text(letter.call_body),
    )


def _maybe_sealed() -> Q:
    return (
        Q(args__has_key=ENVELOPE_KEY)
        | Q(kwargs__has_key=ENVELOPE_KEY)
        | Q(call_body__startswith=TEXT_PREFIX)
    )


def unopenable(ids: Iterable[int]) -> set[int]:
    """The rows among ``ids`` whose sealed payload no configured key opens.

    Asked before a replay claims rows: such a row is skipped and stays pending, never
    published with a missing or empty payload."""
    refused: set[int] = set()
    for letter in DeadLetter.objects.filter(Q(pk__in=list(ids)) & _maybe_sealed()).only(
        "pk", "args", "kwargs", "options", "call_body"
    ):
        try:
            open_payload(letter)
        except PayloadKeyError:
            refused.add(letter.pk)
    return refused


def _resealed_options(options: dict[str, Any]) -> dict[str, Any]:
    return {
        key: reseal(value) if key in SEALED_OPTIONS else value for key, value in options.items()
    }


def letter_is_current(letter: DeadLetter) -> bool:
    """Every sealed part is under the first key and nothing is left in clear."""
    values: list[Any] = [letter.args, letter.kwargs]
    values += [
        v for k, v in (letter.options or {}).items() if k in SEALED_OPTIONS and v is not None
    ]
    if letter.call_body:
        values.append(letter.call_body)
    return all(sealed_with_first_key(value) for value in values)


def reseal_letter(letter: DeadLetter) -> dict[str, Any]:
    """The letter's sealed fields under the first key (``PayloadKeyError``)."""
    return {
        "args": reseal(letter.args),
        "kwargs": reseal(letter.kwargs),
        "options": _resealed_options(letter.options or {}),
        "call_body": reseal_text(letter.call_body),
    }


def reseal_edits(edits: dict[str, Any] | None) -> dict[str, Any]:
    return seal_edits(open_edits(edits))


def edits_are_current(edits: dict[str, Any] | None) -> bool:
    return all(
        sealed_with_first_key(value)
        for field, edit in (edits or {}).items()
        if field in SEALED_EDITS and isinstance(edit, dict)
        for value in edit.values()
        if value is not None
    )


__all__ = [
    "SKIP_KEY_MISSING",
    "Payload",
    "PayloadKeyError",
    "edits_are_current",
    "is_sealed",
    "letter_is_current",
    "open_edits",
    "open_options",
    "open_payload",
    "reseal_edits",
    "reseal_letter",
    "seal_edits",
    "seal_options",
    "unopenable",
]
