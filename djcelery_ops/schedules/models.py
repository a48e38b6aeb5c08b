"""Models of the schedules part: code-managed periodic tasks and the beat leader lease."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils.translation import gettext_lazy as _
from django_celery_beat.models import PeriodicTask


class ManagedSchedule(models.Model):
    """Marks a django-celery-beat ``PeriodicTask`` as created and kept by ``sync_celery_schedules``.

    ``synced_values`` are the row's managed values as the last sync wrote them: a row whose
    current values differ was edited in the admin (drift), and sync keeps the edit unless
    forced.
    """

    periodic_task = models.OneToOneField(
        PeriodicTask, on_delete=models.CASCADE, related_name="djcelery_ops_managed"
    )
    synced_values: models.JSONField[Any, Any] = models.JSONField(default=dict)
    synced_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("code-managed schedule")
        verbose_name_plural = _("code-managed schedules")
        permissions = [("run_periodictask_now", "Can run a periodic task now")]

    def __str__(self) -> str:
        return str(self.periodic_task.name)


class SchedulerLease(models.Model):
    """The lease that makes one beat process the leader; times are the database clock's.

    ``term`` grows by one with every takeover (a renewal keeps it): a fencing token. A
    leader writes ``last_run_at`` only while the row still carries its holder and term, so
    a leader that was frozen or cut off cannot write over its successor's runs.
    """

    name = models.CharField(max_length=100, unique=True)
    holder = models.CharField(max_length=255, blank=True)
    acquired_at = models.DateTimeField(null=True)
    expires_at = models.DateTimeField()
    term = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = _("beat leader lease")
        verbose_name_plural = _("beat leader leases")

    def __str__(self) -> str:
        return f"{self.name}: {self.holder or '-'}"
