"""Admin of dead letters: read-only fields; replay and discard through the service.

The actions and their confirmation page are in ``admin.deadletter_actions``. "Edit and
replay" and the grouped view are extra URLs. Every page stays cheap at a million rows
(README, "Dead letters at scale"): a capped count, filters from index skip scans
(``admin.lists``), exact search by indexed columns, no date hierarchy (its MIN/MAX and
DISTINCT DATE_TRUNC read the whole table; "last failed" offers fixed windows instead), and
the groups from ``deadletter.groups``.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from djcelery_ops.admin.deadletter_actions import DeadLetterActionsMixin
from djcelery_ops.admin.forms import EditReplayForm
from djcelery_ops.admin.lists import (
    CappedCountMixin,
    ExactSearchMixin,
    PlainCheckboxMixin,
    distinct_filter,
    within_filter,
)
from djcelery_ops.admin.payload import edit_initial, opened, shown, shown_edits
from djcelery_ops.deadletter import services as service
from djcelery_ops.deadletter.models import DeadLetter
from djcelery_ops.redact import redact_text


class InterruptedReplayFilter(admin.SimpleListFilter):
    """Dead letters whose replay was committed but never confirmed by the broker: the next
    ``replay_dead_letters`` run (or ``--recover``) publishes them with the same task ids."""

    title = _("replay")
    parameter_name = "replay"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("interrupted", _("interrupted (not confirmed by the broker)"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() != "interrupted":
            return queryset
        letters = service.interrupted_replays().values("dead_letter_id")
        return queryset.filter(pk__in=letters)


@admin.register(DeadLetter)
class DeadLetterAdmin(
    CappedCountMixin, ExactSearchMixin, PlainCheckboxMixin, DeadLetterActionsMixin
):
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
    list_filter = [
        "status",
        InterruptedReplayFilter,
        "reason",
        within_filter("last_failed_at", _("last failed"), "failed_within"),
        distinct_filter("task_name", _("task name")),
        distinct_filter("exception_class", _("exception class")),
        distinct_filter("queue", _("queue")),
    ]
    # Exact, case-sensitive matches only (``ExactSearchMixin``): each one an index lookup.
    search_fields = ["task_id", "root_id", "task_name", "fingerprint"]
    search_help_text = _("An exact task id, root id, task name or fingerprint.")
    list_per_page = 50
    show_full_result_count = False
    # Filters on columns of few values (queue, reason) match rows all over the table: each
    # counted row is a heap read, so the count stops sooner than the runs admin's.
    count_cap = 1_000
    count_timeout_ms = 150
    show_facets = admin.ShowFacets.NEVER  # a count per filter value reads every row
    group_count_cap = service.GROUP_COUNT_CAP  # the groups view counts up to this
    fieldsets = [
        (None, {"fields": ["task_name", "task_id", "status", "reason", "occurrences"]}),
        (
            _("Failure"),
            {"fields": ["exception_class", "shown_message", "pretty_traceback", "retries"]},
        ),
        (
            _("Call"),
            {
                "fields": [
                    "pretty_args",
                    "pretty_kwargs",
                    "payload_truncated",
                    "replay_blocker",
                    "call_content_type",
                ]
            },
        ),
        (
            _("Routing"),
            {
                "fields": [
                    "queue",
                    "remaining_chain",
                    "pretty_options",
                    "periodic_task_name",
                    "root_id",
                    "parent_id",
                    "worker_hostname",
                ]
            },
        ),
        (_("Grouping"), {"fields": ["fingerprint", "first_failed_at", "last_failed_at"]}),
        (_("Lineage"), {"fields": ["replay_of_link", "lineage"]}),
    ]
    actions = ["replay_selected", "republish_original_selected", "discard_selected"]
    change_list_template = "admin/djcelery_ops/deadletter/change_list.html"
    change_form_template = "admin/djcelery_ops/deadletter/change_form.html"

    @admin.display(description=_("message"))
    def short_message(self, obj: DeadLetter) -> str:
        message = redact_text(obj.exception_message)
        return message if len(message) <= 80 else message[:79] + "…"

    @admin.display(description=_("exception message"))
    def shown_message(self, obj: DeadLetter) -> str:
        return redact_text(obj.exception_message)

    @admin.display(description=_("args"))
    def pretty_args(self, obj: DeadLetter) -> SafeString:
        return shown(obj, "args")

    @admin.display(description=_("kwargs"))
    def pretty_kwargs(self, obj: DeadLetter) -> SafeString:
        return shown(obj, "kwargs")

    @admin.display(description=_("publish options"))
    def pretty_options(self, obj: DeadLetter) -> SafeString:
        return shown(obj, "options")

    @admin.display(description=_("rest of the chain"))
    def remaining_chain(self, obj: DeadLetter) -> str:
        """Task names of the chain links a replay continues with, in the order they run."""
        payload = opened(obj)
        if isinstance(payload, str):
            return payload
        workflow = payload.options.get("workflow") or {}
        if workflow.get("__truncated__"):
            names = list(workflow.get("chain_tasks") or [])
            return " → ".join(names + [str(_("(workflow truncated)"))])
        links = reversed(workflow.get("chain") or [])  # Celery carries them reversed
        return " → ".join(str(sig.get("task")) for sig in links if isinstance(sig, dict)) or "-"

    @admin.display(description=_("traceback"))
    def pretty_traceback(self, obj: DeadLetter) -> SafeString:
        return format_html("<pre>{}</pre>", redact_text(obj.traceback))

    @admin.display(description=_("replay of"))
    def replay_of_link(self, obj: DeadLetter) -> str:
        if obj.replay_of is None:
            return "-"
        url = reverse("admin:djcelery_ops_deadletter_change", args=[obj.replay_of.dead_letter_id])
        return format_html('<a href="{}">{}</a>', url, obj.replay_of.dead_letter_id)

    @admin.display(description=_("replays"))
    def lineage(self, obj: DeadLetter) -> str:
        rows = obj.replays.order_by("created_at").values_list(
            "created_at", "by", "reason", "new_task_id", "outcome", "edits"
        )
        if not rows:
            return "-"
        return format_html(
            "<table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>"
            "{}</table>",
            _("when"), _("by"), _("reason"), _("new task id"), _("outcome"), _("edits"),
            format_html_join(
                "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                ((when, by, why, task_id, outcome, shown_edits(edits))
                 for when, by, why, task_id, outcome, edits in rows),
            ),
        )  # fmt: skip

    # --- extra views: edit and replay, groups ---------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        extra = [
            path("groups/", wrap(self.groups_view), name="djcelery_ops_deadletter_groups"),
            path(
                "groups/<str:verb>/",
                wrap(self.group_action_view),
                name="djcelery_ops_deadletter_group_action",
            ),
            path(
                "<path:object_id>/replay/",
                wrap(self.edit_and_replay_view),
                name="djcelery_ops_deadletter_edit_replay",
            ),
        ]
        return extra + super().get_urls()

    def groups_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        groups = service.pending_groups(cap=self.group_count_cap)
        context = {
            **self.admin_site.each_context(request),
            "title": _("Pending dead letters by failure group"),
            "opts": self.model._meta,
            "groups": groups,
            "cap": self.group_count_cap,
            "can_replay": self.has_replay_permission(request),
            "can_discard": self.has_discard_permission(request),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/djcelery_ops/deadletter/groups.html", context)

    def edit_and_replay_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not self.has_replay_permission(request):
            raise PermissionDenied
        letter = self.get_object(request, unquote(object_id))
        if letter is None:  # also a malformed id: get_object answers None, not ValueError
            raise Http404(_("No dead letter with this id."))
        change_url = reverse("admin:djcelery_ops_deadletter_change", args=[letter.pk])
        payload = opened(letter)
        if isinstance(payload, str):  # the key was lost: nothing to show, nothing to replay
            self.message_user(request, payload, messages.ERROR)
            return HttpResponseRedirect(change_url)
        truncated = letter.payload_truncated
        form = EditReplayForm(
            request.POST or None, initial=edit_initial(payload, truncated), truncated=truncated,
            stored=payload,
        )  # fmt: skip
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                outcome = service.replay(
                    [letter], by=request.user, reason=data["reason"],  # type: ignore[arg-type]
                    args=data["args"], kwargs=data["kwargs"], queue=data["queue"] or None,
                )  # fmt: skip
            except service.ReplayError as error:
                self.message_user(request, str(error), messages.ERROR)
                return HttpResponseRedirect(change_url)
            if outcome.done:
                self.message_user(request, _("Replayed with the edited arguments."))
                self._log(request, outcome.dead_letter_ids, f"edit and replay: {data['reason']}")
            self._report_skipped(request, outcome)
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "title": _("Edit and replay"),
            "opts": self.model._meta,
            "original": letter,
            "form": form,
            "media": self.media + form.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request, "admin/djcelery_ops/deadletter/edit_and_replay.html", context
        )
