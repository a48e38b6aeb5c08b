from django.db import models


class Effect(models.Model):
    """One row per side effect a test task performed; tests count them."""

    key = models.CharField(max_length=200)
    task_id = models.CharField(max_length=255, blank=True)
    worker_pid = models.IntegerField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)


class ScheduleSlotRun(models.Model):
    """One row per run of ``record_schedule_slot``; no unique constraint, so duplicates show."""

    slot_key = models.CharField(max_length=300)
    periodic_task_name = models.CharField(max_length=200, blank=True)
    label = models.CharField(max_length=200, blank=True)
    task_id = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
