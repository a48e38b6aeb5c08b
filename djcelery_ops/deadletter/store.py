"""Writing failure records as ``DeadLetter`` rows: grouping fingerprint, size cap, upsert.

What a task raised or was called with may hold text the database refuses (NUL, lone
surrogates): it is escaped visibly here in ``args``/``kwargs`` (for people), and the exact
call is the encoded one (``deadletter.call``, base64 when its text would not be storable),
which is what a replay publishes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from djcelery_ops.conf import ops_settings
from djcelery_ops.crypto import seal, seal_text
from djcelery_ops.db import Sql, column, proposed, upsert
from djcelery_ops.deadletter.call import BLOCKED_TRUNCATED, encode_call
from djcelery_ops.deadletter.models import DeadLetter
from djcelery_ops.deadletter.record import WORKFLOW_KEY, FailureRecord
from djcelery_ops.deadletter.sealed import seal_options
from djcelery_ops.storable import storable_json, storable_text

_VOLATILE = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I), "<uuid>"),
    (re.compile(r"0x[0-9a-f]+", re.I), "<hex>"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<str>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
]
_FRAME = re.compile(r'File "([^"]+)", line \d+, in (\S+)')


def normalise_message(message: str) -> str:
    """The message with ids, numbers and quoted values replaced, for grouping."""
    for pattern, placeholder in _VOLATILE:
        message = pattern.sub(placeholder, message)
    return message[:500]


def top_frame(traceback: str) -> str:
    """``file:function`` of the innermost frame (line numbers move with every deploy)."""
    frames = _FRAME.findall(traceback or "")
    return f"{frames[-1][0]}:{frames[-1][1]}" if frames else ""


def fingerprint(record: FailureRecord) -> str:
    parts = [
        record.task_name,
        record.exception_class or record.reason,
        normalise_message(record.exception_message),
        top_frame(record.traceback),
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def capped_payload(args: Any, kwargs: Any) -> tuple[Any, Any, bool]:
    """Args and kwargs, or a marked preview of them when over the size cap."""
    text = json.dumps([args, kwargs])
    limit = ops_settings.DEAD_LETTER_MAX_PAYLOAD_BYTES
    if len(text.encode()) <= limit:
        return args, kwargs, False
    marker = {"__truncated__": True, "size_bytes": len(text.encode()), "preview": text[:1024]}
    return [marker], {}, True


# Why a plain replay of a letter whose workflow was over the size cap is refused.
BLOCKED_WORKFLOW_TRUNCATED = "workflow truncated"


def capped_workflow(workflow: Any) -> tuple[Any, bool]:
    """The workflow (chain, callbacks, errbacks), or a marker when over the size cap.

    The marker keeps the size and the remaining task names (for people); a replay would
    not continue the workflow, so plain replay refuses such a letter."""
    if not isinstance(workflow, dict):
        return workflow, False
    text = json.dumps(workflow)
    if len(text.encode()) <= ops_settings.DEAD_LETTER_MAX_PAYLOAD_BYTES:
        return workflow, False
    names = [
        sig.get("task") for sig in reversed(workflow.get("chain") or []) if isinstance(sig, dict)
    ]
    marker = {"__truncated__": True, "size_bytes": len(text.encode()), "chain_tasks": names[:50]}
    for key in ("chord", "group_index"):
        if key in workflow:
            marker[key] = workflow[key]
    return marker, True


ORIGINAL_PAYLOAD_KEY = "original_payload_json"
_TEXT_FIELDS = (
    "task_id", "task_name", "reason", "queue", "periodic_task_name", "root_id", "parent_id",
    "exception_class", "exception_message", "traceback", "worker_hostname",
)  # fmt: skip


def storable_record(record: FailureRecord) -> tuple[FailureRecord, Any, Any, bool]:
    """A copy of ``record`` the database accepts, with its capped args and kwargs."""
    args, kwargs, truncated = capped_payload(record.args, record.kwargs)
    (args, kwargs), escaped = storable_json([args, kwargs])
    options, _ = storable_json(record.options)
    workflow_truncated = False
    if WORKFLOW_KEY in options:
        options[WORKFLOW_KEY], workflow_truncated = capped_workflow(options[WORKFLOW_KEY])
    if escaped and not truncated:
        options[ORIGINAL_PAYLOAD_KEY] = json.dumps([record.args, record.kwargs])
    texts: dict[str, Any] = {name: storable_text(getattr(record, name)) for name in _TEXT_FIELDS}
    call, blocker = record.call, record.replay_blocker
    if truncated:
        call, blocker = None, BLOCKED_TRUNCATED
    elif call is None and not blocker:
        # Built by hand (not from a delivery): its args and kwargs are the call itself.
        call, blocker = encode_call(record.args, record.kwargs, "json")
    if workflow_truncated and not blocker:
        blocker = BLOCKED_WORKFLOW_TRUNCATED
    record = dataclasses.replace(record, options=options, call=call, replay_blocker=blocker)
    return dataclasses.replace(record, **texts), args, kwargs, truncated


def call_fields(record: FailureRecord) -> dict[str, Any]:
    """The ``DeadLetter`` fields of the record's kept call, and why none, if none."""
    call = record.call or {}
    return {
        "call_content_type": str(call.get("content_type") or "")[:128],
        "call_content_encoding": str(call.get("content_encoding") or "")[:64],
        "call_body": seal_text(str(call.get("body") or "")),
        "call_body_base64": bool(call.get("base64")),
        "replay_blocker": storable_text(record.replay_blocker)[:255],
    }


def store_record(record: FailureRecord) -> DeadLetter:
    """``write_record``, then the row written (for callers that want the model)."""
    return DeadLetter.objects.get(pk=write_record(record))


def write_record(record: FailureRecord) -> int:
    """Insert the dead letter, or count one more occurrence of the same task id; its id.

    One ``INSERT ... ON CONFLICT (task_id) DO UPDATE`` statement: a first failure and a
    repeated one (a redelivered message failing again) cost the same single round trip,
    and two processes storing the same task id at once cannot both insert. A repeat keeps
    the first payload and status, and takes the latest failure's details.

    Writing the same record again is not a new occurrence: a commit whose answer was lost
    (the connection cut just after it) is retried or spooled and ingested later, and must
    not count the failure twice. A record is the same when its failure time and worker
    are the stored latest ones (a redelivered message fails at another time).
    """
    from djcelery_ops.deadletter.lineage import failed_replay, is_replay

    record, args, kwargs, truncated = storable_record(record)
    first, latest = _first_fields(record, args, kwargs, truncated), _latest_fields(record)

    def write(replay_of: int | None) -> int:
        latest["replay_of_id"] = replay_of
        written = upsert(
            DeadLetter,
            conflict="task_id",
            values={**first, **latest},
            update={
                **{name: Sql(proposed(name)) for name in latest},
                "occurrences": _one_more_occurrence(),
            },
        )
        assert written is not None  # no WHERE on the update: a row is always written
        return int(written)

    headers = record.options.get("headers")
    if not is_replay(headers) and not connection.in_atomic_block:
        return write(None)  # the statement is its own transaction
    # A savepoint inside a caller's transaction: a refused row does not break it.
    with transaction.atomic():
        # A replayed task failing for good links its new dead letter to the replay.
        replay = failed_replay(record.task_id, headers)
        return write(None if replay is None else replay.pk)


def _one_more_occurrence() -> Sql:
    """One more occurrence, unless the proposed row is the stored latest failure again."""
    same = " AND ".join(
        f"{column(name)} = {proposed(name)}" for name in ("last_failed_at", "worker_hostname")
    )
    return Sql(f"{column('occurrences')} + CASE WHEN {same} THEN 0 ELSE 1 END")


def _first_fields(record: FailureRecord, args: Any, kwargs: Any, truncated: bool) -> dict[str, Any]:
    """The columns a first failure writes and a repeat keeps: the call, where it ran."""
    return {
        "task_id": record.task_id[:255],
        "task_name": record.task_name[:255],
        # Sealed when DJCELERY_OPS_ENCRYPTION_KEYS is set (deadletter.sealed).
        "args": seal(args),
        "kwargs": seal(kwargs),
        "payload_truncated": truncated,
        **call_fields(record),
        "options": seal_options(record.options),
        "queue": record.queue[:255],
        "periodic_task_name": record.periodic_task_name[:255],
        "root_id": record.root_id[:255],
        "parent_id": record.parent_id[:255],
        "first_failed_at": record.failed_at_datetime,
        "occurrences": 1,
        "status": DeadLetter.Status.PENDING,
    }


def _latest_fields(record: FailureRecord) -> dict[str, Any]:
    """The columns every failure of the task id writes: how it failed, the latest time."""
    return {
        "reason": record.reason,
        "exception_class": record.exception_class[:255],
        "exception_message": record.exception_message,
        "traceback": record.traceback,
        "retries": record.retries,
        "worker_hostname": record.worker_hostname[:255],
        "fingerprint": fingerprint(record),
        "last_failed_at": record.failed_at_datetime,
        "updated_at": timezone.now(),
    }
