"""What the dead-letter admin shows of a payload: decrypted (``deadletter.sealed``), then
redacted; or, when no configured key decrypts it, the reason, never an empty value."""

from __future__ import annotations

import json
from typing import Any

from django.utils.html import format_html
from django.utils.safestring import SafeString

from djcelery_ops.deadletter.models import DeadLetter
from djcelery_ops.deadletter.sealed import Payload, PayloadKeyError, open_edits, open_payload
from djcelery_ops.redact import redact


def pretty_json(value: Any) -> SafeString:
    # format_html escapes the JSON: args are user data and may hold markup. Secrets are
    # shown redacted; the row keeps them for replay.
    return format_html("<pre>{}</pre>", json.dumps(redact(value), indent=2, sort_keys=True))


def opened(letter: DeadLetter) -> Payload | str:
    """The letter's payload decrypted (once per page), or why it cannot be."""
    if "_djops_payload" not in letter.__dict__:
        try:
            letter.__dict__["_djops_payload"] = open_payload(letter)
        except PayloadKeyError as error:
            letter.__dict__["_djops_payload"] = str(error)
    payload: Payload | str = letter.__dict__["_djops_payload"]
    return payload


def shown(letter: DeadLetter, field: str) -> SafeString:
    payload = opened(letter)
    if isinstance(payload, str):
        return format_html('<p class="errornote">{}</p>', payload)
    return pretty_json(getattr(payload, field))


def edit_initial(payload: Payload, truncated: bool) -> dict[str, str]:
    # A truncated row holds a marked preview, not the call: prefilling it would invite
    # publishing the marker as the task's arguments.
    if truncated:
        return {}
    # Shown redacted: the form puts the stored values back where the operator left them.
    return {"args": json.dumps(redact(payload.args)), "kwargs": json.dumps(redact(payload.kwargs))}


def shown_edits(edits: Any) -> str:
    if not edits:
        return ""
    try:
        return json.dumps(redact(open_edits(edits)))
    except PayloadKeyError as error:
        return str(error)
