"""Bulk dead-letter actions: the whole-group replays and discards handed to a worker.

Read-only like the other admins of the app: the rows are written by ``deadletter.bulk``.
Whoever may replay or discard dead letters sees them; cancel and resume are for those who
may do that action (replay, or discard). A running action's page reloads every 5 s.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from djcelery_ops.admin.mixins import ReadOnlyAdminMixin
from djcelery_ops.deadletter import bulk
from djcelery_ops.deadletter.models import BulkAction
from djcelery_ops.deadletter.outbox import ReplayError

_PERMISSION = {
    BulkAction.Action.REPLAY: "djcelery_ops.replay_deadletter",
    BulkAction.Action.DISCARD: "djcelery_ops.discard_deadletter",
}


@admin.register(BulkAction)
class BulkActionAdmin(ReadOnlyAdminMixin[BulkAction]):
    list_display = (
        "id", "action", "selection_text", "status", "progress", "skipped", "by",
        "created_at", "updated_at",
    )  # fmt: skip
    list_display_links = ("id", "action")
    list_filter = ("status", "action")
    list_select_related = False
    actions = ["cancel_selected", "resume_selected"]
    fieldsets = [
        (None, {"fields": ("action", "selection_text", "reason", "by", "status", "error")}),
        (
            _("Progress"),
            {
                "fields": (
                    "progress",
                    "rate",
                    "skipped",
                    "skipped_reasons",
                    "batches",
                    "last_id",
                    "cancel_requested",
                    "task_id",
                    "created_at",
                    "started_at",
                    "updated_at",
                    "finished_at",
                )  # fmt: skip
            },
        ),
    ]

    def has_view_permission(self, request: HttpRequest, obj: BulkAction | None = None) -> bool:
        return super().has_view_permission(request, obj) or self.has_operate_permission(request)

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return any(request.user.has_perm(codename) for codename in _PERMISSION.values())

    def _operable(
        self, request: HttpRequest, queryset: QuerySet[BulkAction]
    ) -> QuerySet[BulkAction]:
        """The rows whose action this user may do (replay, or discard)."""
        allowed = [
            verb for verb, codename in _PERMISSION.items() if request.user.has_perm(codename)
        ]
        return queryset.filter(action__in=allowed)

    @admin.action(description=_("Cancel selected bulk actions"), permissions=["operate"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[BulkAction]) -> None:
        count = bulk.cancel(self._operable(request, queryset))
        text = ngettext(
            "Cancelling %(count)d bulk action (a running one stops after its current batch).",
            "Cancelling %(count)d bulk actions (a running one stops after its current batch).",
            count,
        )
        self.message_user(request, text % {"count": count}, messages.SUCCESS)

    @admin.action(
        description=_("Resume selected bulk actions (unfinished or failed)"),
        permissions=["operate"],
    )
    def resume_selected(self, request: HttpRequest, queryset: QuerySet[BulkAction]) -> None:
        try:
            count = bulk.resume(self._operable(request, queryset))
        except ReplayError as error:
            self.message_user(request, str(error), messages.ERROR)
            return
        text = ngettext(
            "Handed %(count)d bulk action to a worker again.",
            "Handed %(count)d bulk actions to a worker again.",
            count,
        )
        self.message_user(request, text % {"count": count}, messages.SUCCESS)

    @admin.display(description=_("selection"))
    def selection_text(self, obj: BulkAction) -> str:
        return obj.describe_selection()

    @admin.display(description=_("progress"))
    def progress(self, obj: BulkAction) -> str:
        if obj.total:
            share = min(100, round(100 * (obj.done + obj.skipped) / obj.total))
            return f"{obj.done:,} done of {obj.total:,} ({share} %)"
        return f"{obj.done:,} done"

    @admin.display(description=_("rows per second"))
    def rate(self, obj: BulkAction) -> str:
        if obj.started_at is None:
            return "-"
        seconds = ((obj.finished_at or obj.updated_at) - obj.started_at).total_seconds()
        return f"{(obj.done + obj.skipped) / seconds:,.0f}" if seconds > 0 else "-"

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, object] | None = None,
    ) -> HttpResponse:
        response = super().changeform_view(request, object_id, form_url, extra_context)
        action = self.get_object(request, object_id) if object_id else None
        if action is not None and not action.finished:
            response["Refresh"] = "5"  # the progress, without a click
        return response
