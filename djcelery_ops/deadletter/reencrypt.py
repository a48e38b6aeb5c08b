"""Re-encryption of stored payloads under the first of ``DJCELERY_OPS_ENCRYPTION_KEYS``.

After a new key is put first (the old one kept second), this moves every dead letter and
every replay's edited arguments to the new key, batch by batch; rows stored in clear
(written before encryption was turned on) are encrypted. Rows already under the first key
are left alone, so an interrupted run is simply run again. A row no configured key opens
is left as it is and reported: its key was lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from django.db import transaction

from djcelery_ops.crypto import PayloadKeyError, is_sealed
from djcelery_ops.deadletter.models import DeadLetter, Replay
from djcelery_ops.deadletter.sealed import (
    edits_are_current,
    letter_is_current,
    reseal_edits,
    reseal_letter,
)

_SEALED_FIELDS = ("args", "kwargs", "options", "call_body")


@dataclasses.dataclass
class ReencryptReport:
    letters: int = 0  # dead letters rewritten (or that a dry run would rewrite)
    in_clear: int = 0  # of which stored in clear until now
    replays: int = 0  # replays whose edited arguments were rewritten
    current: int = 0  # dead letters already under the first key
    unopenable: list[int] = dataclasses.field(default_factory=list)  # dead letter ids


def reencrypt(
    *, batch_size: int, dry_run: bool, progress: Callable[[int, int], None] | None = None
) -> ReencryptReport:
    """Rewrite every dead letter (and replay edit) not yet under the first key."""
    report = ReencryptReport()
    total, seen, last = DeadLetter.objects.count(), 0, 0
    rows = DeadLetter.objects.order_by("pk").only("pk", *_SEALED_FIELDS)
    while batch := list(rows.filter(pk__gt=last)[:batch_size]):
        last = batch[-1].pk
        changed = [letter for letter in batch if _resealed(letter, report)]
        if changed and not dry_run:
            with transaction.atomic():
                DeadLetter.objects.bulk_update(changed, _SEALED_FIELDS)
        seen += len(batch)
        if progress:
            progress(seen, total)
    report.replays = _reencrypt_replays(batch_size, dry_run, report)
    return report


def _resealed(letter: DeadLetter, report: ReencryptReport) -> bool:
    """Put the letter's fields under the first key in memory; False if nothing to do."""
    if letter_is_current(letter):
        report.current += 1
        return False
    clear = not (is_sealed(letter.args) or is_sealed(letter.kwargs))
    try:
        fields = reseal_letter(letter)
    except PayloadKeyError:
        report.unopenable.append(letter.pk)
        return False
    for name, value in fields.items():
        setattr(letter, name, value)
    report.letters += 1
    report.in_clear += clear
    return True


def _reencrypt_replays(batch_size: int, dry_run: bool, report: ReencryptReport) -> int:
    done, last = 0, 0
    rows = Replay.objects.exclude(edits={}).order_by("pk").only("pk", "edits", "dead_letter_id")
    while batch := list(rows.filter(pk__gt=last)[:batch_size]):
        last = batch[-1].pk
        changed = []
        for replay in batch:
            if edits_are_current(replay.edits):
                continue
            try:
                replay.edits = reseal_edits(replay.edits)
            except PayloadKeyError:
                if replay.dead_letter_id not in report.unopenable:
                    report.unopenable.append(replay.dead_letter_id)
                continue
            changed.append(replay)
        if changed and not dry_run:
            with transaction.atomic():
                Replay.objects.bulk_update(changed, ["edits"])
        done += len(changed)
    return done
