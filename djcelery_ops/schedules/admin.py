"""Admin of periodic tasks on top of django-celery-beat's, and the beat leader lease.

django-celery-beat's ``PeriodicTaskAdmin`` is unregistered and registered again as a subclass
that adds: whether a row is code-managed and drifted, the next run times in the schedule's
timezone with DST warnings, and a permission-gated "run now" action.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django_celery_beat.admin import PeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from djcelery_ops.schedules.leader import lease_states
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
    actions = (*PeriodicTaskAdmin.actions, "run_now")

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

    @admin.action(description=_("Run selected tasks now (once)"), permissions=["run"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        tasks = list(queryset)
        for task in tasks:
            run_now(task, requested_by=request.user.get_username())
        self.message_user(
            request,
            ngettext(
                "Sent %(count)d periodic task to run now.",
                "Sent %(count)d periodic tasks to run now.",
                len(tasks),
            )
            % {"count": len(tasks)},
        )

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(RUN_PERMISSION)


@admin.register(SchedulerLease)
class SchedulerLeaseAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Read-only: who leads beat, judged by the database clock."""

    list_display = ("name", "holder", "acquired_at", "expires_at", "held")

    @admin.display(description=_("held now"), boolean=True)
    def held(self, obj: SchedulerLease) -> bool:
        state = next((s for s in lease_states() if s.name == obj.name), None)
        return state is not None and state.is_held

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


if admin.site.is_registered(PeriodicTask):
    admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, OpsPeriodicTaskAdmin)
