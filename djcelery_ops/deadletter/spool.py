"""A local durable spool for failure records written while the database is unreachable.

Each record is one JSON file, written to a temporary name, fsynced and renamed, so a crash
leaves either a whole record or none. Ingestion stores a record, then deletes its file: a
crash in between stores it again, which only counts one more occurrence.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from pathlib import Path

from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter.record import FailureRecord

logger = logging.getLogger("djcelery_ops.deadletter")


def spool_dir() -> Path:
    configured = ops_settings.DEAD_LETTER_SPOOL_DIR
    path = Path(configured) if configured else Path(tempfile.gettempdir()) / "djcelery_ops_spool"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_to_spool(record: FailureRecord) -> Path:
    directory = spool_dir()
    name = f"{record.failed_at.replace(':', '')}-{uuid.uuid4().hex}.json"
    tmp = directory / f".{name}.tmp"
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(record.to_json())
        handle.flush()
        os.fsync(handle.fileno())
    final = directory / name
    tmp.rename(final)
    return final


def spooled_files() -> list[Path]:
    return sorted(spool_dir().glob("*.json"))


def has_spooled_records() -> bool:
    return any(spool_dir().glob("*.json"))


def ingest_spool(limit: int | None = None) -> tuple[int, int]:
    """Store spooled records in the database; return (ingested, left)."""
    from djcelery_ops.deadletter.store import store_record

    files = spooled_files()
    ingested = 0
    for path in files[:limit]:
        try:
            record = FailureRecord.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            logger.exception("unreadable spool file %s left in place", path)
            continue
        store_record(record)
        path.unlink(missing_ok=True)
        ingested += 1
    return ingested, len(files) - ingested
