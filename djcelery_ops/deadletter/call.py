"""The call as its message carried it, kept with a dead letter for a faithful replay.

A dead letter's ``args``/``kwargs`` are JSON for people (``wire.jsonable``): a ``Decimal``
or a ``datetime`` is a string there, any other object a ``{"__repr__": ...}`` placeholder.
Replaying those would call the task with other types than the original delivery did. So
the call is also kept encoded with the serializer of the delivery (kombu's
``dumps([args, kwargs])``: JSON keeps its type markers, pickle its objects), and a replay
decodes it with the app's ``accept_content`` and publishes it with the same serializer.

A call that cannot be kept that way (not encodable, over the size cap, a body that was
never decoded) gets a ``replay_blocker``: plain replay refuses it, edit and replay (the
operator gives the arguments) is still allowed.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from kombu import serialization
from kombu.serialization import dumps, loads, prepare_accept_content

from djcelery_ops.conf import ops_settings
from djcelery_ops.storable import storable_text

# Why plain replay of a dead letter would not be faithful (``DeadLetter.replay_blocker``).
BLOCKED_TRUNCATED = "payload truncated"  # the same words as ``selection.SKIP_TRUNCATED``
BLOCKED_OVER_CAP = "payload over the size cap"
BLOCKED_NEVER_DECODED = "body never decoded"
BLOCKED_NOT_ENCODABLE = "payload not kept faithfully"
BLOCKED_LEGACY = "captured before faithful copies were kept"
# Content encodings whose body is bytes, not text: kept in base64.
_BINARY = frozenset(("binary", "raw"))


def serializer_name(content_type: str | None) -> str | None:
    """kombu's serializer name for a content type (``application/json`` -> ``json``)."""
    registry: Any = getattr(serialization, "registry")  # noqa: B009 - not in kombu's stubs
    name = registry.type_to_name.get(content_type) if content_type else None
    return str(name) if name else None


def encode_call(args: Any, kwargs: Any, serializer: str) -> tuple[dict[str, Any] | None, str]:
    """``(call, "")`` with the call encoded by ``serializer``, or ``(None, why not)``.

    ``call`` is JSON-ready (it travels through the spool): content type, content encoding
    and the body, as text when the database can store it as is, else in base64.
    """
    try:
        content_type, encoding, body = dumps(
            [[] if args is None else args, {} if kwargs is None else kwargs],
            serializer=serializer,
        )
    except Exception as error:  # whatever the serializer refuses, it refuses for replay too
        return None, f"{BLOCKED_NOT_ENCODABLE}: {type(error).__name__}: {error}"[:255]
    raw = body if isinstance(body, bytes) else body.encode(encoding or "utf-8", "surrogatepass")
    if len(raw) > ops_settings.DEAD_LETTER_MAX_PAYLOAD_BYTES:
        return None, BLOCKED_OVER_CAP
    as_text = isinstance(body, str) and storable_text(body) == body
    return {
        "content_type": content_type,
        "content_encoding": encoding,
        "body": body if as_text else base64.b64encode(raw).decode("ascii"),
        "base64": not as_text,
    }, ""


def decode_call(
    body: str, *, content_type: str, content_encoding: str, base64_body: bool, accept: Any
) -> tuple[Any, Any]:
    """Args and kwargs decoded from a kept call, refusing content types not in ``accept``."""
    data: str | bytes = body
    if base64_body:
        raw = base64.b64decode(body)
        # kombu would decode text strictly; a lone surrogate was kept with surrogatepass.
        text = content_encoding not in _BINARY
        data = raw.decode(content_encoding or "utf-8", "surrogatepass") if text else raw
    args, kwargs = loads(data, content_type, content_encoding, accept=accept)
    return args, kwargs


def accepted_content_types(accept_content: Iterable[str] | None) -> set[str]:
    """The content types an app's ``accept_content`` (names or types) lets it decode."""
    return set(prepare_accept_content(list(accept_content or ())) or ())
