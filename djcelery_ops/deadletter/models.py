"""Dead letters: the final failures of tasks, kept for operators to inspect and replay."""

from __future__ import annotations

import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Count, Max, Min, Sum
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


def moment_of(moment: datetime.datetime | datetime.timedelta) -> datetime.datetime:
    """A datetime as it is, a timedelta as that long ago; the same as ``TaskRun.since``."""
    if isinstance(moment, datetime.timedelta):
        return timezone.now() - moment
    if isinstance(moment, datetime.datetime):
        return moment
    raise TypeError(f"since() takes a datetime or a timedelta, not {type(moment).__name__}")


class DeadLetterQuerySet(models.QuerySet["DeadLetter"]):
    def pending(self) -> DeadLetterQuerySet:
        return self.filter(status=DeadLetter.Status.PENDING)

    def for_task(self, name: str) -> DeadLetterQuerySet:
        return self.filter(task_name=name)

    def since(self, moment: datetime.datetime | datetime.timedelta) -> DeadLetterQuerySet:
        """Last failed at or after ``moment`` (a datetime, or a timedelta ago)."""
        return self.filter(last_failed_at__gte=moment_of(moment))

    def by_fingerprint(self) -> models.QuerySet[Any, Any]:
        """One row per failure group: how many letters, failures, first and last seen."""
        return (
            self.order_by()
            .values("fingerprint", "task_name", "exception_class")
            .annotate(
                letters=Count("id"),
                failures=Sum("occurrences"),
                first_seen=Min("first_failed_at"),
                last_seen=Max("last_failed_at"),
            )
            .order_by("-last_seen")
        )


class DeadLetter(models.Model):
    """One task id that failed for good; redeliveries of the same id update this row."""

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        REPLAYED = "replayed", _("replayed")
        RESOLVED = "resolved", _("resolved")
        DISCARDED = "discarded", _("discarded")

    class Reason(models.TextChoices):
        EXCEPTION = "exception", _("exception")
        PERMANENT_ERROR = "permanent_error", _("permanent error")
        RETRIES_EXHAUSTED = "retries_exhausted", _("retries exhausted")
        SOFT_TIME_LIMIT = "soft_time_limit", _("soft time limit")
        HARD_TIME_LIMIT = "hard_time_limit", _("hard time limit")
        WORKER_LOST = "worker_lost", _("worker lost")
        UNREGISTERED = "unregistered", _("unregistered task")
        REJECTED_MESSAGE = "rejected_message", _("rejected message")
        REJECTED_BY_TASK = "rejected_by_task", _("rejected by the task")
        TOO_MANY_DELIVERIES = "too_many_deliveries", _("too many deliveries")
        IDEMPOTENCY_KEY_BUSY = "idempotency_key_busy", _("idempotency key busy too long")
        MALFORMED_MESSAGE = "malformed_message", _("malformed message")
        COMMIT_UNKNOWN = "commit_unknown", _("commit outcome unknown")

    # Unique by a constraint, not ``unique=True``: that also builds a varchar_pattern_ops
    # index on PostgreSQL for LIKE 'prefix%', which no query of the app makes.
    task_id = models.CharField(_("task id"), max_length=255)
    task_name = models.CharField(_("task name"), max_length=255)
    args = models.JSONField(_("args"), default=list)
    kwargs = models.JSONField(_("kwargs"), default=dict)
    payload_truncated = models.BooleanField(
        _("payload truncated"),
        default=False,
        help_text=_("Args and kwargs were over the size cap; only a preview is stored."),
    )
    # The call as the message carried it (``deadletter.call``): what plain replay decodes and
    # publishes with the same serializer. Empty content type: ``args``/``kwargs`` are the
    # call itself (a row written by hand), or ``replay_blocker`` says why none was kept.
    call_content_type = models.CharField(_("call content type"), max_length=128, blank=True)
    call_content_encoding = models.CharField(_("call content encoding"), max_length=64, blank=True)
    call_body = models.TextField(_("encoded call"), blank=True)
    call_body_base64 = models.BooleanField(_("encoded call in base64"), default=False)
    replay_blocker = models.CharField(
        _("not replayable as is"),
        max_length=255,
        blank=True,
        help_text=_(
            "Why a plain replay would not call the task as the original message did; "
            "edit and replay is still possible."
        ),
    )
    options = models.JSONField(
        _("publish options"),
        default=dict,
        help_text=_("Queue, exchange, routing key, priority, headers, ids: what a replay uses."),
    )
    queue = models.CharField(_("queue"), max_length=255, blank=True)
    periodic_task_name = models.CharField(_("periodic task"), max_length=255, blank=True)
    root_id = models.CharField(_("root id"), max_length=255, blank=True)
    parent_id = models.CharField(_("parent id"), max_length=255, blank=True)
    exception_class = models.CharField(_("exception class"), max_length=255, blank=True)
    exception_message = models.TextField(_("exception message"), blank=True)
    traceback = models.TextField(_("traceback"), blank=True)
    retries = models.PositiveIntegerField(_("retries done"), default=0)
    worker_hostname = models.CharField(_("worker"), max_length=255, blank=True)
    reason = models.CharField(_("reason"), max_length=32, choices=Reason.choices)
    fingerprint = models.CharField(_("fingerprint"), max_length=64)
    first_failed_at = models.DateTimeField(_("first failed at"))
    last_failed_at = models.DateTimeField(_("last failed at"))
    occurrences = models.PositiveIntegerField(_("occurrences"), default=1)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.PENDING
    )
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)
    replay_of = models.ForeignKey(
        "Replay",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="failures",
        verbose_name=_("replay of"),
        help_text=_("The replay whose task failed again as this dead letter."),
    )

    objects = DeadLetterQuerySet.as_manager()

    class Meta:
        verbose_name = _("dead letter")
        verbose_name_plural = _("dead letters")
        ordering = ["-last_failed_at"]
        permissions = [
            ("replay_deadletter", _("Can replay dead letters")),
            ("discard_deadletter", _("Can discard dead letters")),
        ]
        constraints = [models.UniqueConstraint(fields=["task_id"], name="djops_dl_task_id_uniq")]
        # The admin's pages at a million rows (README, "Dead letters at scale"): the
        # changelist's order, each filter's column first (also for the filter's skip scan),
        # search by root id, and the groups view's walk of the pending groups.
        indexes = [
            models.Index(fields=["-last_failed_at", "-id"], name="djops_dl_last"),
            models.Index(fields=["status", "-last_failed_at"], name="djops_dl_status_last"),
            models.Index(fields=["task_name", "-last_failed_at"], name="djops_dl_task_last"),
            models.Index(fields=["fingerprint"], name="djops_dl_fingerprint"),
            models.Index(fields=["reason"], name="djops_dl_reason"),
            models.Index(fields=["exception_class"], name="djops_dl_exc"),
            models.Index(fields=["queue"], name="djops_dl_queue"),
            models.Index(
                fields=["root_id"], condition=~models.Q(root_id=""), name="djops_dl_root_set"
            ),
            models.Index(
                fields=["status", "fingerprint", "-last_failed_at"], name="djops_dl_status_group"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}] {self.get_reason_display()}"


class DeliveryCount(models.Model):
    """How many times a message's worker child died under it (Redis keeps no such count)."""

    task_id = models.CharField(max_length=255, unique=True)
    deliveries = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("delivery count")
        verbose_name_plural = _("delivery counts")

    def __str__(self) -> str:
        return f"{self.task_id}: {self.deliveries}"


class OperatorAction(models.Model):
    """Who acted on a dead letter and why: the fields replays and discards share."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("user"),
    )
    by = models.CharField(_("by"), max_length=255)
    reason = models.TextField(_("reason"))

    class Meta:
        abstract = True


class Replay(OperatorAction):
    """Lineage of one replay: which dead letter, who, when, why, what was edited, outcome.

    The new task id links the replayed message back here: its success resolves the dead
    letter, and its final failure is a new dead letter whose ``replay_of`` points here.
    """

    class Outcome(models.TextChoices):
        PENDING = "pending", _("pending")
        SUCCEEDED = "succeeded", _("succeeded")
        FAILED = "failed", _("failed")

    dead_letter = models.ForeignKey(
        DeadLetter, on_delete=models.CASCADE, related_name="replays", verbose_name=_("dead letter")
    )
    created_at = models.DateTimeField(_("replayed at"), default=timezone.now)
    run_id = models.CharField(_("run id"), max_length=32, db_index=True)
    edits = models.JSONField(
        _("edits"),
        default=dict,
        blank=True,
        help_text=_("Arguments and queue the operator changed: {field: {old, new}}."),
    )
    new_task_id = models.CharField(_("new task id"), max_length=255, unique=True)
    outcome = models.CharField(
        _("outcome"), max_length=16, choices=Outcome.choices, default=Outcome.PENDING
    )
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    # Set once the broker confirmed the message. A replay committed but never confirmed
    # (the broker cut, the process killed) is published again with the same task id.
    published_at = models.DateTimeField(_("published at"), null=True, blank=True)

    class Meta:
        verbose_name = _("replay")
        verbose_name_plural = _("replays")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"replay of {self.dead_letter_id} as {self.new_task_id} ({self.outcome})"


class Discard(OperatorAction):
    """Who discarded a dead letter, when and why."""

    dead_letter = models.ForeignKey(
        DeadLetter, on_delete=models.CASCADE, related_name="discards", verbose_name=_("dead letter")
    )
    created_at = models.DateTimeField(_("discarded at"), default=timezone.now)

    class Meta:
        verbose_name = _("discard")
        verbose_name_plural = _("discards")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"discard of {self.dead_letter_id} by {self.by}"


class BulkAction(OperatorAction):
    """A replay or discard of many dead letters handed to a worker, and its progress.

    The admin hands over a whole failure group above ``DEAD_LETTER_BACKGROUND_ABOVE``
    rows; ``deadletter.bulk`` runs it in slices and writes the figures after each batch,
    in the batch's own transaction, so they are exact after a crash too.
    """

    class Action(models.TextChoices):
        REPLAY = "replay", _("replay")
        DISCARD = "discard", _("discard")

    class Status(models.TextChoices):
        QUEUED = "queued", _("queued")
        RUNNING = "running", _("running")
        DONE = "done", _("done")
        CANCELLED = "cancelled", _("cancelled")
        FAILED = "failed", _("failed")

    action = models.CharField(_("action"), max_length=16, choices=Action.choices)
    selection = models.JSONField(
        _("selection"), default=dict, help_text=_("Which pending dead letters: the filters.")
    )
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.QUEUED
    )
    total = models.PositiveBigIntegerField(
        _("total"), null=True, blank=True, help_text=_("Rows matching when it started.")
    )
    done = models.PositiveBigIntegerField(_("done"), default=0)
    skipped = models.PositiveBigIntegerField(_("skipped"), default=0)
    skipped_reasons = models.JSONField(_("skipped, by reason"), default=dict, blank=True)
    batches = models.PositiveIntegerField(_("batches"), default=0)
    # The keyset position: the highest dead-letter id already read (a slice resumes after it).
    last_id = models.BigIntegerField(_("last id read"), default=0)
    cancel_requested = models.BooleanField(_("cancel requested"), default=False)
    # The message allowed to run it now; another one (a stale redelivery) steps aside.
    task_id = models.CharField(_("task id"), max_length=255, blank=True)
    error = models.TextField(_("last error"), blank=True)
    created_at = models.DateTimeField(_("requested at"), default=timezone.now)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    updated_at = models.DateTimeField(_("last progress"), default=timezone.now)

    class Meta:
        verbose_name = _("bulk dead-letter action")
        verbose_name_plural = _("bulk dead-letter actions")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.action} of {self.describe_selection()} ({self.status})"

    def describe_selection(self) -> str:
        parts = [f"{key} {value}" for key, value in sorted(self.selection.items())]
        return ", ".join(parts) or "every pending dead letter"

    @property
    def finished(self) -> bool:
        return self.status in (self.Status.DONE, self.Status.CANCELLED, self.Status.FAILED)
