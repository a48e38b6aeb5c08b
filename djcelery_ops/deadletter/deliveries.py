"""Delivery counting for messages whose worker child dies (Redis keeps no count)."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import F

from djcelery_ops.deadletter.models import DeliveryCount


def count_delivery(task_id: str) -> int:
    """Add one lost delivery of ``task_id`` and return how many there were."""
    rows = DeliveryCount.objects.filter(task_id=task_id)
    with transaction.atomic():
        if not rows.update(deliveries=F("deliveries") + 1):
            try:
                with transaction.atomic():
                    DeliveryCount.objects.create(task_id=task_id, deliveries=1)
            except IntegrityError:
                rows.update(deliveries=F("deliveries") + 1)
        return rows.values_list("deliveries", flat=True).get()
