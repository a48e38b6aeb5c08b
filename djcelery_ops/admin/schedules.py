"""Admin of periodic tasks on top of django-celery-beat's, and the beat leader lease.

django-celery-beat's ``PeriodicTaskAdmin`` is unregistered and registered again as a subclass
that adds: whether a row is code-managed and drifted, the next run times in the schedule's
timezone with DST warnings, and a permission-gated "run now" action.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.exceptions import ImproperlyConfigured
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django_celery_beat.admin import PeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from djcelery_ops.admin.mixins import ReadOnlyAdminMixin
from djcelery_ops.schedules.leader import LeaseState, lease_state
from djcelery_ops.schedules.models import SchedulerLease
from djcelery_ops.schedules.run_now import run_now
from djcelery_ops.schedules.sync import drifted_fields
from djcelery_ops.schedules.timing import dst_clashes, next_run_times

RUN_PERMISSION = "djcelery_ops.run_periodictask_now"


def code_status(task: PeriodicTask) -> str:
    drifted = drifted_fields(task)
    if drifted is None:
        return "admin"
    if drifted:
        return f"code, drift: {', '.join(drifted)}"
    return "code, in sync"


class OpsPeriodicTaskAdmin(PeriodicTaskAdmin):  # type: ignore[misc]
    list_display = (*PeriodicTaskAdmin.list_display, "code_managed")
    readonly_fields = (*PeriodicTaskAdmin.readonly_fields, "code_managed", "next_runs")
    fieldsets = (
        *PeriodicTaskAdmin.fieldsets,
        (_("Operations"), {"fields": ("code_managed", "next_runs")}),
    )
    # django-celery-beat's "run_tasks" is left out: it bypasses ``run_now`` (no audit
    # header, no log) and would be a second "run" entry in the list.
    actions = ("enable_tasks", "disable_tasks", "toggle_tasks", "run_now")

    def get_queryset(self, request: HttpRequest) -> QuerySet[PeriodicTask]:
        queryset: QuerySet[PeriodicTask] = super().get_queryset(request)
        return queryset.select_related("djcelery_ops_managed")

    @admin.display(description=_("managed by"))
    def code_managed(self, obj: PeriodicTask) -> str:
        return code_status(obj)

    @admin.display(description=_("next runs"))
    def next_runs(self, obj: PeriodicTask) -> SafeString | str:
        if obj.pk is None:
            return "-"
        runs = format_html_join(
            "", "<li>{}</li>", ((f"{run:%Y-%m-%d %H:%M:%S %Z}",) for run in next_run_times(obj))
        )
        clashes = dst_clashes(obj.crontab) if obj.crontab is not None else []
        warnings = format_html_join(
            "", '<li class="warning">{}</li>', ((str(clash),) for clash in clashes)
        )
        return format_html("<ul>{}</ul><ul>{}</ul>", runs, warnings)

    # --- actions: django-celery-beat's declare no permission; here each one does --------

    @admin.action(description=_("Run selected tasks now (once)"), permissions=["run"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        tasks = list(queryset)
        try:
            for task in tasks:
                run_now(task, requested_by=request.user.get_username())
        except ImproperlyConfigured as error:  # no project Celery app: nothing is sent
            self.message_user(request, str(error), messages.ERROR)
            return
        self._log(request, tasks, "run now")
        self._report(
            request,
            ngettext(
                "Sent %(count)d periodic task to run now.",
                "Sent %(count)d periodic tasks to run now.",
                len(tasks),
            ),
            len(tasks),
        )

    # Enable, disable and toggle stay django-celery-beat's own (its update also signals the
    # change to beat); they only gain the change permission and a log entry.

    @admin.action(description=_("Enable selected tasks"), permissions=["change"])
    def enable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self._log(request, list(queryset), "enable")
        super().enable_tasks(request, queryset)

    @admin.action(description=_("Disable selected tasks"), permissions=["change"])
    def disable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self._log(request, list(queryset), "disable")
        super().disable_tasks(request, queryset)

    @admin.action(description=_("Toggle activity of selected tasks"), permissions=["change"])
    def toggle_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self._log(request, list(queryset), "toggle")
        super().toggle_tasks(request, queryset)

    def _report(self, request: HttpRequest, template: str, count: int) -> None:
        self.message_user(request, template % {"count": count}, messages.SUCCESS)

    def _log(self, request: HttpRequest, tasks: list[PeriodicTask], message: str) -> None:
        if tasks and request.user.pk is not None:
            LogEntry.objects.log_actions(
                user_id=request.user.pk,
                queryset=PeriodicTask.objects.filter(pk__in=[task.pk for task in tasks]),
                action_flag=CHANGE,
                change_message=message,
            )

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(RUN_PERMISSION)


@admin.register(SchedulerLease)
class SchedulerLeaseAdmin(ReadOnlyAdminMixin[SchedulerLease]):
    """Read-only: who leads beat, judged by the database clock."""

    list_display = ("name", "holder", "acquired_at", "expires_at", "held")

    def get_queryset(self, request: HttpRequest) -> QuerySet[SchedulerLease]:
        # The database's clock comes with every row: "held" needs no query per row.
        return super().get_queryset(request).annotate(database_now=Now())

    @admin.display(description=_("held now"), boolean=True)
    def held(self, obj: SchedulerLease) -> bool:
        database_now = getattr(obj, "database_now", None)
        if database_now is None:  # a row that did not come from get_queryset
            state = lease_state(obj.name)
            return state is not None and state.is_held
        return LeaseState(
            obj.name, obj.holder, obj.acquired_at, obj.expires_at, database_now
        ).is_held


if admin.site.is_registered(PeriodicTask):
    admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, OpsPeriodicTaskAdmin)
