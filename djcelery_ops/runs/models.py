"""Job runs: one ``TaskRun`` row per task id, moved through its lifecycle by the recorder."""

from __future__ import annotations

import datetime
from typing import Any

from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

# A state's rank inside one attempt; ``progress = retries * ATTEMPT_STRIDE + rank`` orders
# every event of a task id, so a later state wins even when its batch is written first.
ATTEMPT_STRIDE = 100
STUCK_AFTER = datetime.timedelta(hours=1)


class TaskRunQuerySet(models.QuerySet["TaskRun"]):
    def failed(self) -> TaskRunQuerySet:
        return self.filter(state__in=TaskRun.FAILED_STATES)

    def succeeded(self) -> TaskRunQuerySet:
        return self.filter(state=TaskRun.State.SUCCEEDED)

    def running(self) -> TaskRunQuerySet:
        return self.filter(state=TaskRun.State.STARTED)

    def for_task(self, name: str) -> TaskRunQuerySet:
        return self.filter(task_name=name)

    def since(self, moment: datetime.datetime | datetime.timedelta) -> TaskRunQuerySet:
        """Runs first received at or after ``moment`` (a datetime, or a timedelta ago)."""
        if isinstance(moment, datetime.timedelta):
            moment = timezone.now() - moment
        elif not isinstance(moment, datetime.datetime):
            # A date or a string would be compared as something else, or fail deep in SQL.
            raise TypeError(f"since() takes a datetime or a timedelta, not {type(moment).__name__}")
        return self.filter(received_at__gte=moment)

    def stuck(
        self, older_than: datetime.timedelta = datetime.timedelta(hours=1)
    ) -> TaskRunQuerySet:
        """Started, not finished, and started longer ago than ``older_than``."""
        return self.running().filter(started_at__lt=timezone.now() - older_than)

    def stats(self, window: datetime.timedelta | None = None) -> list[dict[str, Any]]:
        """Per task name: runs, failures, failure rate, p50/p95/max runtime (s).

        ``window`` keeps the runs received in that last stretch of time; without it the
        queryset is taken as it is (filter it with ``since()``).
        """
        from djcelery_ops.runs.stats import task_stats

        return task_stats(self if window is None else self.since(window))


class TaskRun(models.Model):
    """What ran, when, where, for how long and how it ended; one row per task id."""

    class State(models.TextChoices):
        RECEIVED = "received", _("received")
        STARTED = "started", _("started")
        RETRY = "retry", _("retry")
        SUCCEEDED = "succeeded", _("succeeded")
        FAILED = "failed", _("failed")
        REVOKED = "revoked", _("revoked")
        DEAD_LETTERED = "dead_lettered", _("dead-lettered")

    RANKS = {
        State.RECEIVED: 10,
        State.STARTED: 20,
        State.RETRY: 30,
        State.SUCCEEDED: 40,
        State.FAILED: 40,
        State.REVOKED: 40,
        State.DEAD_LETTERED: 50,
    }
    FAILED_STATES = (State.FAILED, State.DEAD_LETTERED)
    FINISHED_STATES = (State.SUCCEEDED, State.FAILED, State.REVOKED, State.DEAD_LETTERED)

    # Unique through Meta.constraints, not unique=True: on PostgreSQL unique=True also
    # builds a second, varchar_pattern_ops index for LIKE, another random-key index that
    # every insert pays and no query uses.
    task_id = models.CharField(_("task id"), max_length=255)
    task_name = models.CharField(_("task name"), max_length=255, blank=True)
    state = models.CharField(_("state"), max_length=16, choices=State.choices)
    progress = models.PositiveIntegerField(
        _("progress"), default=0, help_text=_("retries * 100 + state rank: the later event wins.")
    )
    args_digest = models.CharField(_("args digest"), max_length=64, blank=True)
    args = models.JSONField(_("args"), null=True, blank=True)
    kwargs = models.JSONField(_("kwargs"), null=True, blank=True)
    queue = models.CharField(_("queue"), max_length=255, blank=True)
    worker_hostname = models.CharField(_("worker"), max_length=255, blank=True)
    periodic_task_name = models.CharField(_("periodic task"), max_length=255, blank=True)
    root_id = models.CharField(
        _("root id"),
        max_length=255,
        blank=True,
        help_text=_("Blank for a task that is its own root."),
    )
    parent_id = models.CharField(_("parent id"), max_length=255, blank=True)
    tenant = models.CharField(_("tenant"), max_length=255, blank=True)
    received_at = models.DateTimeField(_("received at"), null=True, blank=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    runtime = models.FloatField(_("runtime (s)"), null=True, blank=True)
    retries = models.PositiveIntegerField(_("retries"), default=0)
    exception_class = models.CharField(_("exception class"), max_length=255, blank=True)
    exception_message = models.TextField(_("exception message"), blank=True)

    objects = TaskRunQuerySet.as_manager()

    class Meta:
        verbose_name = _("task run")
        verbose_name_plural = _("task runs")
        ordering = ["-id"]
        # Reading the Prometheus metrics and the health details (djcelery_ops.views).
        permissions = [("view_metrics", _("Can view task metrics and health details"))]
        constraints = [models.UniqueConstraint(fields=["task_id"], name="djops_run_task_id_uniq")]
        # Each index costs every insert; a random key (a task id) costs the most, because
        # it lands on a random page of a large index. Only the task-id index must be one.
        indexes = [
            # since() + stats(): an index-only scan over a window on PostgreSQL.
            models.Index(
                fields=["received_at", "task_name", "state", "runtime"], name="djops_run_recv"
            ),
            models.Index(fields=["task_name", "-received_at"], name="djops_run_task"),
            # The changelist by state (ORDER BY id DESC LIMIT 50), running(), stuck().
            models.Index(fields=["state", "-id"], name="djops_run_state_id"),
            # Lineage and search: only tasks sent from tasks or canvases have these.
            models.Index(
                fields=["parent_id"], name="djops_run_parent_set", condition=~Q(parent_id="")
            ),
            models.Index(fields=["root_id"], name="djops_run_root_set", condition=~Q(root_id="")),
            models.Index(fields=["queue"], name="djops_run_queue"),
            models.Index(fields=["tenant"], name="djops_run_tenant", condition=~Q(tenant="")),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}] {self.get_state_display()}"

    @property
    def dead_letter(self) -> Any:
        """The ``DeadLetter`` of this task id (they share it), or None."""
        from djcelery_ops.deadletter.models import DeadLetter

        return DeadLetter.objects.filter(task_id=self.task_id).first()
