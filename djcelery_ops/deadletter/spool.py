"""A local durable spool for failure records written while the database is unreachable.

Each record is one JSON file, written to a temporary name, fsynced and renamed, so a crash
leaves either a whole record or none. Ingestion stores a record, then deletes its file: a
crash in between stores it again, which the store knows for the same failure (no second
occurrence). A file the database refuses is quarantined, never retried in front of the
healthy ones.

With ``DJCELERY_OPS_ENCRYPTION_KEYS`` set, a file holds the whole record sealed
(``{"__djcelery_ops_sealed__": "<token>"}``): a payload is no more in clear on the worker's
disk than in the database. A file no configured key opens is quarantined with that reason;
restore the key and move it back to ingest it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO

from django.db import DatabaseError, DataError, IntegrityError, InterfaceError

from djcelery_ops.conf import ops_settings
from djcelery_ops.crypto import PayloadKeyError, encryption_enabled, is_sealed, seal, unseal
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
        handle.write(spool_text(record))
        handle.flush()
        os.fsync(handle.fileno())
    final = directory / name
    tmp.rename(final)
    return final


def spool_text(record: FailureRecord) -> str:
    """What a spool file holds: the record's JSON, sealed whole when encryption is on."""
    text = record.to_json()
    return json.dumps(seal(json.loads(text))) if encryption_enabled() else text


def record_from_spool_text(text: str) -> FailureRecord:
    data = json.loads(text)
    return FailureRecord.from_json(json.dumps(unseal(data)) if is_sealed(data) else text)


def spooled_files() -> list[Path]:
    return sorted(spool_dir().glob("*.json"))


def has_spooled_records() -> bool:
    return any(spool_dir().glob("*.json"))


def quarantine_dir() -> Path:
    """Where files the database refused wait for a person, each with a ``.reason`` file."""
    path = spool_dir() / "quarantine"
    path.mkdir(parents=True, exist_ok=True)
    return path


def quarantined_files() -> list[Path]:
    return sorted(quarantine_dir().glob("*.json"))


@dataclasses.dataclass
class IngestReport:
    ingested: int = 0
    quarantined: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    left: int = 0
    outage: str = ""  # why ingestion stopped early: the database went away


def ingest_spool(limit: int | None = None) -> IngestReport:
    """Store spooled records file by file.

    A file the database refuses (``DataError``, ``IntegrityError``) or that cannot be read
    moves to the quarantine directory with its reason, and the files behind it go on. Only
    an outage stops the run; what is not done yet stays in the spool (``left``).
    """
    every = spooled_files()
    files = every[:limit]
    report = IngestReport(left=len(every) - len(files))
    for index, path in enumerate(files):
        try:
            stored = _ingest_file(path)
        except (DataError, IntegrityError) as error:
            reason = f"refused by the database: {error!r}"
            report.quarantined.append((quarantine(path, reason), reason))
        except (DatabaseError, InterfaceError) as error:
            report.outage, report.left = repr(error), len(every) - index
            break
        except _Unreadable as error:
            reason = f"unreadable: {error.__cause__!r}"
            report.quarantined.append((quarantine(path, reason), reason))
        else:
            report.ingested += stored
    return report


class _Unreadable(Exception):
    pass


def _ingest_file(path: Path) -> int:
    """Store one file's record and delete the file; 0 when another ingestion has it.

    The file is claimed with an exclusive ``flock`` held until it is deleted: ingestions
    run at once in every process of a host (pool children, the worker's timer, the
    command), and without the claim each of them stored the same file. The kernel drops
    the lock of a process that dies, so a crash leaves the file to the next ingestion.
    """
    from djcelery_ops.deadletter.store import write_record

    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return 0  # ingested concurrently by another process
    with handle:
        if not _claim(handle, path):
            return 0
        try:
            record = record_from_spool_text(handle.read().decode("utf-8"))
        except (OSError, ValueError, TypeError, PayloadKeyError) as error:
            raise _Unreadable from error
        write_record(record)
        path.unlink(missing_ok=True)
    return 1


def _claim(handle: BinaryIO, path: Path) -> bool:
    """Lock the open file; False when another ingestion holds it or has deleted it."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    try:
        # Locked after the holder deleted it: this inode is no longer the spool's file.
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def quarantine(path: Path, reason: str) -> Path:
    """Move ``path`` out of the spool, next to a ``.reason`` file saying why."""
    target = quarantine_dir() / path.name
    target.with_suffix(".reason").write_text(reason + "\n", encoding="utf-8")
    path.rename(target)
    logger.error("spool file %s quarantined to %s: %s", path.name, target, reason)
    return target
