"""Delivery counting for messages whose worker child dies (Redis keeps no count)."""

from __future__ import annotations

from djcelery_ops.db import Sql, column, now_sql, upsert
from djcelery_ops.deadletter.models import DeliveryCount


def count_delivery(task_id: str) -> int:
    """Add one lost delivery of ``task_id`` and return how many there were."""
    deliveries = upsert(
        DeliveryCount,
        conflict="task_id",
        values={"task_id": task_id, "deliveries": 1, "updated_at": now_sql()},
        update={"deliveries": Sql(f"{column('deliveries')} + 1"), "updated_at": now_sql()},
        returning="deliveries",
    )
    assert deliveries is not None  # no WHERE: the statement always writes a row
    return int(deliveries)
