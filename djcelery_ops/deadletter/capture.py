"""The one entry point every failure path calls: store the record, or spool it."""

from __future__ import annotations

import contextlib
import logging

from django.db import DatabaseError, InterfaceError, close_old_connections, connection

from djcelery_ops.deadletter.record import FailureRecord
from djcelery_ops.deadletter.spool import has_spooled_records, ingest_spool, write_to_spool
from djcelery_ops.deadletter.store import store_record
from djcelery_ops.logs import log_event
from djcelery_ops.signals import dead_lettered

logger = logging.getLogger("djcelery_ops.deadletter")


def capture_failure(record: FailureRecord) -> bool:
    """Keep the record: in the database if it answers, else in the spool. Never raises.

    Returns True when the record reached the database.
    """
    try:
        _store_with_one_reconnect(record)
    except (DatabaseError, InterfaceError) as error:
        _drop_broken_connection()
        path = write_to_spool(record)
        logger.warning(
            "database unreachable (%s): dead letter of %s[%s] spooled to %s",
            error, record.task_name, record.task_id, path,
        )  # fmt: skip
        _announce(record, stored=False)
        return False
    log_event("task.dead_lettered", record, level=logging.ERROR)
    _announce(record, stored=True)
    drain_spool_quietly()
    return True


def _announce(record: FailureRecord, *, stored: bool) -> None:
    """Send ``dead_lettered``; a receiver that fails is logged, the record is kept anyway."""
    for receiver, error in dead_lettered.send_robust(FailureRecord, record=record, stored=stored):
        if isinstance(error, Exception):
            logger.error("dead_lettered receiver %r failed: %r", receiver, error)


def _store_with_one_reconnect(record: FailureRecord) -> None:
    """A connection can be stale (server restarted, inherited across a fork): retry once.

    Inside a transaction (an eager call, a test) the connection is the caller's: leave it.
    """
    if not connection.in_atomic_block:
        close_old_connections()
    try:
        store_record(record)
    except (DatabaseError, InterfaceError):
        if connection.in_atomic_block:
            raise
        _drop_broken_connection()
        store_record(record)


def drain_spool_quietly() -> None:
    """Ingest what an earlier outage left in the spool, now that the database answers."""
    try:
        if has_spooled_records():
            ingested, left = ingest_spool()
            logger.info("ingested %d spooled dead letters, %d left", ingested, left)
    except (DatabaseError, InterfaceError):
        _drop_broken_connection()
        logger.warning("spool ingestion postponed: database unreachable")


def _drop_broken_connection() -> None:
    """Close a dead connection so the next attempt opens a new one."""
    with contextlib.suppress(DatabaseError, InterfaceError):
        connection.close()
