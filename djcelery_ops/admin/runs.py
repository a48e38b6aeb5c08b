"""Read-only admin of job runs: cheap on millions of rows, lineage on the detail page."""

from __future__ import annotations

import datetime
import json
from typing import Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from djcelery_ops.admin.dashboard import dashboard_view
from djcelery_ops.admin.mixins import ReadOnlyAdminMixin
from djcelery_ops.redact import redact, redact_text
from djcelery_ops.runs.models import TaskRun
from djcelery_ops.runs.stats import distinct_values

COUNT_CAP = 10_000
LINEAGE_FIELDS = ("parent_link", "root_link", "children_links", "dead_letter_link")
ROUTING_FIELDS = (
    "queue", "worker_hostname", "periodic_task_name", "args_digest", "shown_args", "shown_kwargs",
)  # fmt: skip
CHILDREN_SHOWN = 50


class CappedCountPaginator(Paginator):  # type: ignore[type-arg]
    """Counts at most ``cap + 1`` rows: an exact count of millions costs seconds.

    The changelist's pagination template reads ``cl.paginator.cap`` to say "more than".
    """

    cap = COUNT_CAP

    @cached_property
    def count(self) -> int:
        rows: Any = self.object_list
        return int(rows[: self.cap + 1].count())


class _DistinctValuesFilter(admin.SimpleListFilter):
    """A column's values from an index walk, not a DISTINCT over the whole table."""

    column = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, value) for value in distinct_values(self.column)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{self.column: value}) if value else queryset


class TaskNameFilter(_DistinctValuesFilter):
    title = _("task")
    parameter_name = column = "task_name"


class QueueFilter(_DistinctValuesFilter):
    title = _("queue")
    parameter_name = column = "queue"


class TenantFilter(_DistinctValuesFilter):
    title = _("tenant")
    parameter_name = column = "tenant"


class ReceivedWithinFilter(admin.SimpleListFilter):
    title = _("received")
    parameter_name = "received_within"
    WINDOWS = {"1h": 1, "24h": 24, "7d": 24 * 7}

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("1h", _("last hour")), ("24h", _("last 24 hours")), ("7d", _("last 7 days"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        hours = self.WINDOWS.get(self.value() or "")
        if hours is None:
            return queryset
        return queryset.filter(received_at__gte=timezone.now() - datetime.timedelta(hours=hours))


class TaskRunAdmin(ReadOnlyAdminMixin[TaskRun]):
    list_display = [
        "task_name",
        "state",
        "queue",
        "tenant",
        "retries",
        "received_at",
        "runtime_display",
        "exception_class",
        "worker_hostname",
    ]
    list_filter = [
        "state",
        ReceivedWithinFilter,
        TaskNameFilter,
        QueueFilter,
        TenantFilter,
    ]
    # Exact, case-sensitive matches only: each one is an index lookup on millions of rows
    # (the admin's "=field" is iexact, UPPER(...) = UPPER(...), which reads them all).
    search_fields = ["task_id", "root_id", "parent_id", "task_name"]
    search_help_text = _("An exact task id, root id, parent id or task name.")
    list_per_page = 50
    show_full_result_count = False
    paginator = CappedCountPaginator
    fieldsets = [
        (None, {"fields": ["task_name", "task_id", "state", "retries", "tenant"]}),
        (_("Timing"), {"fields": ["received_at", "started_at", "finished_at", "runtime"]}),
        (_("Outcome"), {"fields": ["exception_class", "shown_message"]}),
        (_("Lineage"), {"fields": LINEAGE_FIELDS}),
        (_("Routing and call"), {"fields": ROUTING_FIELDS}),
    ]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[TaskRun], search_term: str
    ) -> tuple[QuerySet[TaskRun], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q()
        for field in self.search_fields:
            match |= Q(**{field: term})
        return queryset.filter(match), False

    def get_urls(self) -> list[URLPattern]:
        dashboard = path(
            "dashboard/",
            self.admin_site.admin_view(self.dashboard),
            name="djcelery_ops_taskrun_dashboard",
        )
        return [dashboard, *super().get_urls()]

    def dashboard(self, request: HttpRequest) -> HttpResponse:
        context = {**self.admin_site.each_context(request), "opts": self.opts}
        if not self.has_view_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        return dashboard_view(request, context)

    # Stored arguments (DJCELERY_OPS_RUNS_STORE_ARGS) and messages are shown redacted.
    @admin.display(description=_("args"))
    def shown_args(self, obj: TaskRun) -> str:
        return "-" if obj.args is None else json.dumps(redact(obj.args))

    @admin.display(description=_("kwargs"))
    def shown_kwargs(self, obj: TaskRun) -> str:
        return "-" if obj.kwargs is None else json.dumps(redact(obj.kwargs))

    @admin.display(description=_("exception message"))
    def shown_message(self, obj: TaskRun) -> str:
        return redact_text(obj.exception_message)

    @admin.display(description=_("runtime"), ordering="runtime")
    def runtime_display(self, obj: TaskRun) -> str:
        return "" if obj.runtime is None else f"{obj.runtime:.3f} s"

    def _run_link(self, task_id: str) -> SafeString | str:
        if not task_id:
            return "-"
        run = TaskRun.objects.filter(task_id=task_id).only("pk", "task_name", "state").first()
        if run is None:
            return format_html("{} ({})", task_id, _("not recorded"))
        url = reverse("admin:djcelery_ops_taskrun_change", args=[run.pk])
        return format_html('<a href="{}">{}</a> {}', url, run.task_name, run.get_state_display())

    @admin.display(description=_("parent"))
    def parent_link(self, obj: TaskRun) -> SafeString | str:
        return self._run_link(obj.parent_id)

    @admin.display(description=_("root"))
    def root_link(self, obj: TaskRun) -> SafeString | str:
        return "-" if obj.root_id == obj.task_id else self._run_link(obj.root_id)

    @admin.display(description=_("children"))
    def children_links(self, obj: TaskRun) -> SafeString | str:
        children = TaskRun.objects.filter(parent_id=obj.task_id).exclude(pk=obj.pk)
        shown = list(children.only("pk", "task_name", "state")[:CHILDREN_SHOWN])
        if not shown:
            return "-"
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                '<li><a href="{}">{}</a> {}</li>',
                (
                    (reverse("admin:djcelery_ops_taskrun_change", args=[c.pk]), c.task_name,
                     c.get_state_display())
                    for c in shown
                ),
            ),
        )  # fmt: skip

    @admin.display(description=_("dead letter"))
    def dead_letter_link(self, obj: TaskRun) -> SafeString | str:
        letter = obj.dead_letter
        if letter is None:
            return "-"
        url = reverse("admin:djcelery_ops_deadletter_change", args=[letter.pk])
        return format_html(
            '<a href="{}">{}</a> ({})',
            url,
            letter.get_reason_display(),
            letter.get_status_display(),
        )


admin.site.register(TaskRun, TaskRunAdmin)
