"""Read-only admin of job runs: cheap on millions of rows (``admin.lists``), lineage on the
detail page."""

from __future__ import annotations

import json

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from djcelery_ops.admin.dashboard import dashboard_view
from djcelery_ops.admin.lists import (
    CappedCountMixin,
    ExactSearchMixin,
    distinct_filter,
    within_filter,
)
from djcelery_ops.admin.mixins import ReadOnlyAdminMixin
from djcelery_ops.redact import redact, redact_text
from djcelery_ops.runs.models import TaskRun

LINEAGE_FIELDS = ("parent_link", "root_link", "children_links", "dead_letter_link")
ROUTING_FIELDS = (
    "queue", "worker_hostname", "periodic_task_name", "args_digest", "shown_args", "shown_kwargs",
)  # fmt: skip
CHILDREN_SHOWN = 50


TaskNameFilter = distinct_filter("task_name", _("task"))
QueueFilter = distinct_filter("queue", _("queue"))
TenantFilter = distinct_filter("tenant", _("tenant"))


ReceivedWithinFilter = within_filter("received_at", _("received"), "received_within")


class TaskRunAdmin(CappedCountMixin, ExactSearchMixin, ReadOnlyAdminMixin[TaskRun]):
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
    fieldsets = [
        (None, {"fields": ["task_name", "task_id", "state", "retries", "tenant"]}),
        (_("Timing"), {"fields": ["received_at", "started_at", "finished_at", "runtime"]}),
        (_("Outcome"), {"fields": ["exception_class", "shown_message"]}),
        (_("Lineage"), {"fields": LINEAGE_FIELDS}),
        (_("Routing and call"), {"fields": ROUTING_FIELDS}),
    ]

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
