"""The one entry point every failure path calls: store the record, or spool it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading

from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    connection,
)

from djcelery_ops.conf import ops_settings
from djcelery_ops.connections import close_unusable_connection
from djcelery_ops.deadletter.record import FailureRecord
from djcelery_ops.deadletter.spool import (
    has_spooled_records,
    ingest_spool,
    quarantine,
    write_to_spool,
)
from djcelery_ops.deadletter.store import ORIGINAL_PAYLOAD_KEY, write_record
from djcelery_ops.logs import log_event
from djcelery_ops.signals import dead_lettered

logger = logging.getLogger("djcelery_ops.deadletter")
# The database answered and refused the data: retrying or spooling as-is cannot help.
_REFUSED = (DataError, IntegrityError)


def capture_failure(record: FailureRecord) -> bool:
    """Keep the record: in the database if it answers, else in the spool. Never raises.

    Returns True when the record reached the database.
    """
    try:
        _store_refused_data_reduced(record)
    except _REFUSED as error:
        # The database answers but will not take this record: not an outage. Keep it out
        # of the spool, where it would block the healthy records behind it.
        quarantine(write_to_spool(record), f"refused by the database: {error!r}")
        _announce(record, stored=False)
        return False
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


def _store_refused_data_reduced(record: FailureRecord) -> None:
    """Store the record; if the database refuses its call or options, store it without.

    Text is made storable before it gets here; what is left to refuse is rare (NaN or
    Infinity in the call, which JSON columns reject). The reduced row keeps the failure
    visible, grouped and replayable (the exact call as JSON text in its options); the full
    record goes to the quarantine directory for a person.
    """
    try:
        _store_with_one_reconnect(record)
    except _REFUSED as error:
        logger.error("dead letter %s refused (%r): stored reduced", record.task_id, error)
        reduced = dataclasses.replace(
            record,
            args=[{"__refused__": True, "error": repr(error)[:1000]}],
            kwargs={},
            options={ORIGINAL_PAYLOAD_KEY: json.dumps([record.args, record.kwargs])},
        )
        _store_with_one_reconnect(reduced)
        quarantine(write_to_spool(record), f"stored reduced; refused by the database: {error!r}")


def _store_with_one_reconnect(record: FailureRecord) -> None:
    """A connection can be stale (server restarted, inherited across a fork): retry once.

    Inside a transaction (an eager call, a test) the connection is the caller's: leave it.
    Not ``close_old_connections``: with Django's default ``CONN_MAX_AGE = 0`` it closes a
    healthy connection every time, a new connection per dead letter even where
    ``CELERY_DB_REUSE_MAX`` keeps the worker's.
    """
    if not connection.in_atomic_block:
        close_unusable_connection()
    try:
        write_record(record)
    except _REFUSED:
        raise  # the data, not the connection: a reconnect would not help
    except (DatabaseError, InterfaceError):
        if connection.in_atomic_block:
            raise
        _drop_broken_connection()
        write_record(record)


def drain_spool_quietly() -> None:
    """Ingest what an earlier outage left in the spool, now that the database answers."""
    try:
        if not has_spooled_records():
            return
        report = ingest_spool()
    except OSError as error:
        logger.error("spool ingestion failed: %r", error)
        return
    logger.info(
        "ingested %d spooled dead letters, %d quarantined, %d left",
        report.ingested, len(report.quarantined), report.left,
    )  # fmt: skip
    if report.outage:
        _drop_broken_connection()
        logger.warning("spool ingestion postponed: database unreachable (%s)", report.outage)


def _drop_broken_connection() -> None:
    """Close a dead connection so the next attempt opens a new one."""
    with contextlib.suppress(DatabaseError, InterfaceError):
        connection.close()


class SpoolIngestionTimer:
    """A daemon thread of the worker's main process that drains the spool every
    ``DJCELERY_OPS_DEAD_LETTER_SPOOL_INGEST_INTERVAL`` seconds.

    Without it a record spooled during an outage waits for the next failure, worker start
    or command run. A round that finds no file costs one directory listing and no query.
    Concurrent ingestions (pool children, other workers) are safe: each file is claimed
    with a lock (``spool._claim``). The thread's connection is closed after each round.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="djcelery_ops-spool-ingestion", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(float(ops_settings.DEAD_LETTER_SPOOL_INGEST_INTERVAL)):
            try:
                drain_spool_quietly()
            except Exception:  # the timer must outlive any one round
                logger.exception("spool ingestion round failed")
            finally:
                _drop_broken_connection()  # this thread's own connection


spool_ingestion_timer = SpoolIngestionTimer()
