"""Read-only admin of dead letters: filter, search, inspect. Replay has its own actions."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from djcelery_ops.deadletter.models import DeadLetter

if TYPE_CHECKING:
    _DeadLetterAdminBase = admin.ModelAdmin[DeadLetter]
else:  # ModelAdmin is generic only in django-stubs
    _DeadLetterAdminBase = admin.ModelAdmin


def _pretty(value: Any) -> SafeString:
    # format_html escapes the JSON: args are user data and may hold markup.
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True))


@admin.register(DeadLetter)
class DeadLetterAdmin(_DeadLetterAdminBase):
    list_display = [
        "task_name",
        "reason",
        "exception_class",
        "short_message",
        "occurrences",
        "status",
        "queue",
        "last_failed_at",
    ]
    list_filter = ["status", "reason", "task_name", "exception_class", "queue"]
    search_fields = ["task_id", "task_name", "exception_message", "fingerprint", "root_id"]
    date_hierarchy = "last_failed_at"
    list_per_page = 50
    show_full_result_count = False
    fieldsets = [
        (None, {"fields": ["task_name", "task_id", "status", "reason", "occurrences"]}),
        (
            _("Failure"),
            {"fields": ["exception_class", "exception_message", "pretty_traceback", "retries"]},
        ),
        (_("Call"), {"fields": ["pretty_args", "pretty_kwargs", "payload_truncated"]}),
        (
            _("Routing"),
            {
                "fields": [
                    "queue",
                    "pretty_options",
                    "periodic_task_name",
                    "root_id",
                    "parent_id",
                    "worker_hostname",
                ]
            },
        ),
        (_("Grouping"), {"fields": ["fingerprint", "first_failed_at", "last_failed_at"]}),
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: DeadLetter | None = None) -> list[str]:
        return [str(field) for _name, options in self.fieldsets for field in options["fields"]]

    @admin.display(description=_("message"))
    def short_message(self, obj: DeadLetter) -> str:
        message = obj.exception_message
        return message if len(message) <= 80 else message[:79] + "…"

    @admin.display(description=_("args"))
    def pretty_args(self, obj: DeadLetter) -> SafeString:
        return _pretty(obj.args)

    @admin.display(description=_("kwargs"))
    def pretty_kwargs(self, obj: DeadLetter) -> SafeString:
        return _pretty(obj.kwargs)

    @admin.display(description=_("publish options"))
    def pretty_options(self, obj: DeadLetter) -> SafeString:
        return _pretty(obj.options)

    @admin.display(description=_("traceback"))
    def pretty_traceback(self, obj: DeadLetter) -> SafeString:
        return format_html("<pre>{}</pre>", obj.traceback)
