"""Idempotency keys: one row per effect that must happen once, and enqueue-time locks."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _


class IdempotencyKeyQuerySet(models.QuerySet["IdempotencyKey"]):
    def in_flight(self) -> IdempotencyKeyQuerySet:
        """Keys claimed by a task that holds its lease now (database clock)."""
        return self.filter(state=IdempotencyKey.State.RUNNING, lease_expires_at__gte=Now())

    def expired_leases(self) -> IdempotencyKeyQuerySet:
        """Keys whose holder died or overran: the next delivery may claim them."""
        return self.filter(state=IdempotencyKey.State.RUNNING, lease_expires_at__lt=Now())

    def done(self) -> IdempotencyKeyQuerySet:
        return self.filter(state=IdempotencyKey.State.DONE)

    def failed(self) -> IdempotencyKeyQuerySet:
        return self.filter(state=IdempotencyKey.State.FAILED)

    def for_task(self, name: str) -> IdempotencyKeyQuerySet:
        return self.filter(task_name=name)

    def finished_before(self, moment: object) -> IdempotencyKeyQuerySet:
        """Keys no task holds any more whose last activity is older than ``moment``."""
        State = IdempotencyKey.State
        return self.filter(
            Q(state=State.DONE, completed_at__lt=moment)
            | Q(state=State.FAILED, created_at__lt=moment)
            | Q(state=State.RUNNING, lease_expires_at__lt=moment)
        )


class IdempotencyKey(models.Model):
    """The claim on one effect. ``token`` grows by one with every claim (fencing)."""

    class State(models.TextChoices):
        RUNNING = "running", _("running")
        DONE = "done", _("done")
        FAILED = "failed", _("failed")

    class Mode(models.TextChoices):
        ATOMIC = "atomic", _("atomic")
        LEASE = "lease", _("lease")

    key = models.CharField(_("key"), max_length=255, unique=True)
    task_name = models.CharField(_("task name"), max_length=255)
    mode = models.CharField(_("mode"), max_length=8, choices=Mode.choices)
    state = models.CharField(_("state"), max_length=8, choices=State.choices)
    owner_task_id = models.CharField(_("owner task id"), max_length=255, blank=True)
    token = models.BigIntegerField(_("fencing token"), default=1)
    lease_expires_at = models.DateTimeField(_("lease expires at"), null=True, blank=True)
    attempts = models.PositiveIntegerField(_("attempts"), default=1)
    result = models.JSONField(_("result"), null=True, blank=True)
    result_stored = models.BooleanField(
        _("result stored"),
        default=False,
        help_text=_("False when the result was not JSON or over the size cap."),
    )
    created_at = models.DateTimeField(_("created at"))
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)
    expires_at = models.DateTimeField(
        _("expires at"),
        null=True,
        blank=True,
        help_text=_("After this a done key no longer stops a new run; empty: never."),
    )

    objects = IdempotencyKeyQuerySet.as_manager()

    class Meta:
        verbose_name = _("idempotency key")
        verbose_name_plural = _("idempotency keys")
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["state", "lease_expires_at"], name="djops_idem_state_lease"),
            models.Index(fields=["task_name", "state"], name="djops_idem_task_state"),
            models.Index(fields=["completed_at"], name="djops_idem_completed"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.state}, token {self.token})"


class EnqueueLock(models.Model):
    """A pending message of a ``unique_for`` task; gone when it starts or expires."""

    key = models.CharField(_("key"), max_length=255, unique=True)
    task_id = models.CharField(_("task id"), max_length=255)
    expires_at = models.DateTimeField(_("expires at"))

    class Meta:
        verbose_name = _("enqueue lock")
        verbose_name_plural = _("enqueue locks")

    def __str__(self) -> str:
        return f"{self.key} -> {self.task_id}"
