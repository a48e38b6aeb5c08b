"""Tasks the test suite sends to real worker processes."""

import os

from celery import shared_task

from .models import Effect


@shared_task(bind=True)
def record_effect(self, key: str) -> int:
    effect = Effect.objects.create(key=key, task_id=self.request.id, worker_pid=os.getpid())
    return effect.pk


@shared_task(bind=True)
def record_schedule_slot(self, label: str = "") -> int:
    """Record the schedule-slot header beat put on this run; tests count runs per slot."""
    from .models import ScheduleSlotRun

    run = ScheduleSlotRun.objects.create(
        slot_key=self.request.get("djcelery_ops_schedule_slot") or "",
        periodic_task_name=self.request.get("periodic_task_name") or "",
        label=label,
        task_id=self.request.id,
    )
    return run.pk
