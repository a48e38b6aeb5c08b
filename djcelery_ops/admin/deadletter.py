"""Admin of dead letters: read-only fields; replay and discard through the service.

Replay and discard go through a confirmation page that asks for a reason (template chain
``admin/<app>/<model>/action_confirmation.html``, then ``admin/<app>/...``, overridable
like Django's ``delete_selected``). "Edit and replay" and the grouped view are extra URLs.
Over 300 lines because one ModelAdmin owns the changelist, the two confirmed actions and
the two extra views; each method is short and calls the dead-letter services.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from djcelery_ops.admin.forms import EditReplayForm, ReasonForm
from djcelery_ops.admin.mixins import ReadOnlyAdminMixin
from djcelery_ops.admin.payload import edit_initial, opened, shown, shown_edits
from djcelery_ops.deadletter import services as service
from djcelery_ops.deadletter.models import DeadLetter
from djcelery_ops.redact import redact_text

_TITLES = {
    "replay": _("Replay dead letters?"),
    "republish": _("Republish the original messages?"),
    "discard": _("Discard dead letters?"),
}


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
class DeadLetterAdmin(ReadOnlyAdminMixin[DeadLetter]):
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
        "status", InterruptedReplayFilter, "reason", "task_name", "exception_class", "queue",
    ]  # fmt: skip
    search_fields = ["task_id", "task_name", "exception_message", "fingerprint", "root_id"]
    date_hierarchy = "last_failed_at"
    list_per_page = 50
    show_full_result_count = False
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
    action_confirmation_template: str | None = None

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

    # --- permissions of the custom actions ---------------------------------------------

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("djcelery_ops.replay_deadletter")

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("djcelery_ops.discard_deadletter")

    # --- actions: both go through the confirmation page ----------------------------------

    @admin.action(description=_("Replay selected dead letters"), permissions=["replay"])
    def replay_selected(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter]
    ) -> HttpResponse | None:
        return self._confirm(request, queryset, "replay", "replay_selected")

    @admin.action(
        description=_("Republish the original message (bodies never decoded)"),
        permissions=["replay"],
    )
    def republish_original_selected(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter]
    ) -> HttpResponse | None:
        return self._confirm(request, queryset, "republish", "republish_original_selected")

    @admin.action(description=_("Discard selected dead letters"), permissions=["discard"])
    def discard_selected(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter]
    ) -> HttpResponse | None:
        return self._confirm(request, queryset, "discard", "discard_selected")

    def _confirm(
        self,
        request: HttpRequest,
        queryset: QuerySet[DeadLetter],
        verb: str,
        action: str | None,
        group: str | None = None,
    ) -> HttpResponse | None:
        """The confirmation page; on its POST with a reason, do it and return None."""
        form = ReasonForm(request.POST if request.POST.get("post") == "yes" else None)
        if form.is_bound and form.is_valid():
            self._perform(request, queryset, verb, form.cleaned_data["reason"])
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": _TITLES[verb],
            "verb": verb,
            "plan": service.plan(queryset, action=verb),
            "form": form,
            "opts": self.model._meta,
            "action": action,
            "group": group,
            "select_across": request.POST.get("select_across") == "1",
            "selected": [str(pk) for pk in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self._confirmation_templates(), context)

    def _confirmation_templates(self) -> list[str]:
        opts = self.model._meta
        if self.action_confirmation_template:
            return [self.action_confirmation_template]
        return [
            f"admin/{opts.app_label}/{opts.model_name}/action_confirmation.html",
            f"admin/{opts.app_label}/action_confirmation.html",
        ]

    def _perform(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter], verb: str, reason: str
    ) -> None:
        by = request.user
        try:
            if verb == "replay":
                outcome = service.replay(queryset, by=by, reason=reason)  # type: ignore[arg-type]
                template = ngettext(
                    "Replayed %(count)d dead letter.", "Replayed %(count)d dead letters.",
                    outcome.done,
                )  # fmt: skip
            elif verb == "republish":
                outcome = service.republish_original(queryset, by=by, reason=reason)  # type: ignore[arg-type]
                template = ngettext(
                    "Republished the original message of %(count)d dead letter.",
                    "Republished the original messages of %(count)d dead letters.",
                    outcome.done,
                )  # fmt: skip
            else:
                outcome = service.discard(queryset, by=by, reason=reason)  # type: ignore[arg-type]
                template = ngettext(
                    "Discarded %(count)d dead letter.", "Discarded %(count)d dead letters.",
                    outcome.done,
                )  # fmt: skip
        except service.ReplayError as error:
            self.message_user(request, str(error), messages.ERROR)
            return
        self.message_user(request, template % {"count": outcome.done}, messages.SUCCESS)
        self._report_skipped(request, outcome)
        self._log(request, outcome.dead_letter_ids, f"{verb}: {reason}")

    def _report_skipped(self, request: HttpRequest, outcome: service.Outcome) -> None:
        skipped = sum(outcome.skipped.values())
        if skipped:
            details = ", ".join(f"{why} {n}" for why, n in sorted(outcome.skipped.items()))
            text = ngettext(
                "Skipped %(count)d dead letter: %(details)s.",
                "Skipped %(count)d dead letters: %(details)s.",
                skipped,
            )
            self.message_user(
                request, text % {"count": skipped, "details": details}, messages.WARNING
            )

    def _log(self, request: HttpRequest, ids: list[int], message: str) -> None:
        if ids and request.user.pk is not None:
            LogEntry.objects.log_actions(
                user_id=request.user.pk,
                queryset=DeadLetter.objects.filter(pk__in=ids),
                action_flag=CHANGE,
                change_message=message,
            )

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
        groups = DeadLetter.objects.pending().by_fingerprint()[:500]
        context = {
            **self.admin_site.each_context(request),
            "title": _("Pending dead letters by failure group"),
            "opts": self.model._meta,
            "groups": groups,
            "can_replay": self.has_replay_permission(request),
            "can_discard": self.has_discard_permission(request),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/djcelery_ops/deadletter/groups.html", context)

    def group_action_view(self, request: HttpRequest, verb: str) -> HttpResponse:
        allowed = {"replay": self.has_replay_permission, "discard": self.has_discard_permission}
        if verb not in allowed or not allowed[verb](request):
            raise PermissionDenied
        fingerprint = request.GET.get("fingerprint", "")
        queryset = service.Selection(fingerprint=fingerprint).queryset()
        response = self._confirm(request, queryset, verb, None, group=fingerprint)
        return response or HttpResponseRedirect(reverse("admin:djcelery_ops_deadletter_groups"))

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
