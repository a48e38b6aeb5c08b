"""The pending failure groups, for the admin's grouped view: cheap at a million rows.

A ``GROUP BY fingerprint`` over every pending row reads them all (400 ms at a million).
On PostgreSQL the groups come instead from the index ``(status, fingerprint,
-last_failed_at)``: a skip scan lists the pending fingerprints
(``db.distinct_column_values``), then per group one probe gives its latest row (task,
exception, last seen) and a count that stops at ``cap + 1`` index entries. A group over
the cap says "more than" (``capped``); its exact size is what a replay or discard of the
group reports. SQLite groups with the ORM (``DeadLetterQuerySet.by_fingerprint``).
"""

from __future__ import annotations

from typing import Any

from django.db import connections

from djcelery_ops.db import distinct_column_values
from djcelery_ops.deadletter.models import DeadLetter

GROUP_COUNT_CAP = 1_000
GROUPS_SHOWN = 500


def pending_groups(
    *, cap: int = GROUP_COUNT_CAP, limit: int = GROUPS_SHOWN, using: str = "default"
) -> list[dict[str, Any]]:  # fmt: skip
    """Pending groups, latest failure first: fingerprint, task_name, exception_class,
    letters (at most ``cap``), capped (more than ``cap``), last_seen."""
    if connections[using].vendor != "postgresql":
        rows = DeadLetter.objects.using(using).pending().by_fingerprint()[:limit]
        return [_capped(row, row["letters"], cap) for row in rows]
    pending = DeadLetter.Status.PENDING
    fingerprints = distinct_column_values(
        DeadLetter, "fingerprint", where={"status": pending}, using=using
    )
    if not fingerprints:
        return []
    connection = connections[using]
    table = connection.ops.quote_name(DeadLetter._meta.db_table)
    sql = f"""
        SELECT g.fp, latest.task_name, latest.exception_class, latest.last_failed_at,
            (SELECT count(*) FROM (
                SELECT 1 FROM {table} WHERE status = %s AND fingerprint = g.fp LIMIT %s
            ) AS capped) AS letters
        FROM unnest(%s::text[]) AS g(fp)
        CROSS JOIN LATERAL (
            SELECT task_name, exception_class, last_failed_at FROM {table}
            WHERE status = %s AND fingerprint = g.fp ORDER BY last_failed_at DESC LIMIT 1
        ) AS latest
        ORDER BY latest.last_failed_at DESC LIMIT %s
    """  # noqa: S608 - the quoted name of the model's own table
    with connection.cursor() as cursor:
        cursor.execute(sql, [pending, cap + 1, fingerprints, pending, limit])
        rows = cursor.fetchall()
    names = ("fingerprint", "task_name", "exception_class", "last_seen")
    return [_capped(dict(zip(names, row[:4], strict=True)), row[4], cap) for row in rows]


def _capped(row: dict[str, Any], letters: int, cap: int) -> dict[str, Any]:
    return {**row, "letters": min(letters, cap), "capped": letters > cap}
