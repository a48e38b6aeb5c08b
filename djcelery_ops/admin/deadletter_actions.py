"""The dead-letter admin's actions: replay, republish and discard, through a confirmation.

Each goes through a confirmation page that asks for a reason (template chain
``admin/<app>/<model>/action_confirmation.html``, then ``admin/<app>/...``, overridable
like Django's ``delete_selected``); the whole-group buttons of the grouped view too.

At scale ("select all 500,000 matching", a whole group): the confirmation page counts
only the first ``PLAN_CAP`` rows (``selection.plan(cap=...)``) and carries the filters,
not the ids. A whole group of more than ``DEAD_LETTER_BACKGROUND_ABOVE`` rows is handed
to a worker (``deadletter.bulk``: a ``BulkAction`` whose admin page shows its progress).
Otherwise the confirmed action runs in the request as one bounded, batched service
call: the service reads the selection in keyset batches of
``DJCELERY_OPS_DEAD_LETTER_REPLAY_BATCH_SIZE``, commits (and publishes) each on its own,
keeps no list of ids (``keep_ids=False``), and after each batch the admin writes that
batch's ``LogEntry`` rows and logs the progress (logger ``djcelery_ops.deadletter``).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from djcelery_ops.admin.forms import ReasonForm
from djcelery_ops.admin.mixins import ReadOnlyAdminMixin
from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter import bulk
from djcelery_ops.deadletter import services as service
from djcelery_ops.deadletter.models import DeadLetter
from djcelery_ops.deadletter.selection import Selection

PLAN_CAP = 1_000

logger = logging.getLogger("djcelery_ops.deadletter")

_TITLES = {
    "replay": _("Replay dead letters?"),
    "republish": _("Republish the original messages?"),
    "discard": _("Discard dead letters?"),
}


class DeadLetterActionsMixin(ReadOnlyAdminMixin[DeadLetter]):
    """Replay, republish and discard of selected rows or of a whole failure group."""

    action_confirmation_template: str | None = None

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
        """The confirmation page; on its POST with a reason, do it and return None (or,
        for a whole group too big for a request, hand it to a worker: its progress page)."""
        form = ReasonForm(request.POST if request.POST.get("post") == "yes" else None)
        above = ops_settings.DEAD_LETTER_BACKGROUND_ABOVE if group is not None else None
        if form.is_bound and form.is_valid():
            reason = form.cleaned_data["reason"]
            if above is not None and _more_than(queryset, above):
                return self._hand_to_worker(request, Selection(fingerprint=group), verb, reason)
            self._perform(request, queryset, verb, reason)
            return None
        # The plan's capped count tells whether a group goes to a worker, without a query
        # more unless the threshold is above what the page counts.
        cap = PLAN_CAP if above is None else min(PLAN_CAP, above)
        plan = service.plan(queryset, action=verb, cap=cap)
        background = plan.capped and (cap == above or _more_than(queryset, above))
        context = {
            **self.admin_site.each_context(request),
            "title": _TITLES[verb],
            "verb": verb,
            "plan": plan,
            "form": form,
            "opts": self.model._meta,
            "action": action,
            "group": group,
            "background": background,
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
        batch: dict[str, Any] = {"progress": partial(self._batch_done, request, verb, reason)}
        batch["keep_ids"] = False
        try:
            if verb == "replay":
                outcome = service.replay(queryset, by=by, reason=reason, **batch)  # type: ignore[arg-type]
                template = ngettext(
                    "Replayed %(count)d dead letter.", "Replayed %(count)d dead letters.",
                    outcome.done,
                )  # fmt: skip
            elif verb == "republish":
                outcome = service.republish_original(queryset, by=by, reason=reason, **batch)  # type: ignore[arg-type]
                template = ngettext(
                    "Republished the original message of %(count)d dead letter.",
                    "Republished the original messages of %(count)d dead letters.",
                    outcome.done,
                )  # fmt: skip
            else:
                outcome = service.discard(queryset, by=by, reason=reason, **batch)  # type: ignore[arg-type]
                template = ngettext(
                    "Discarded %(count)d dead letter.", "Discarded %(count)d dead letters.",
                    outcome.done,
                )  # fmt: skip
        except service.ReplayError as error:
            self.message_user(request, str(error), messages.ERROR)
            return
        self.message_user(request, template % {"count": outcome.done}, messages.SUCCESS)
        self._report_skipped(request, outcome)

    def _hand_to_worker(
        self, request: HttpRequest, selection: Selection, verb: str, reason: str
    ) -> HttpResponse | None:
        try:
            action = bulk.start(selection, action=verb, by=request.user, reason=reason)  # type: ignore[arg-type]
        except service.ReplayError as error:
            self.message_user(request, str(error), messages.ERROR)
            return None
        self.message_user(
            request,
            _("Handed to a worker: %(action)s. Its page shows the progress.") % {"action": action},
            messages.SUCCESS,
        )
        return HttpResponseRedirect(
            reverse("admin:djcelery_ops_bulkaction_change", args=[action.pk])
        )

    def _batch_done(
        self, request: HttpRequest, verb: str, reason: str, outcome: service.Outcome,
        claimed: list[int],
    ) -> None:  # fmt: skip
        """After each committed batch: its ``LogEntry`` rows, and the progress in the log."""
        self._log(request, claimed, f"{verb}: {reason}")
        skipped = sum(outcome.skipped.values())
        logger.info(
            "admin %s by %s: %d done, %d skipped so far (run %s)",
            verb, request.user, outcome.done, skipped, outcome.run_id,
        )  # fmt: skip

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
        if request.user.pk is not None:
            bulk.log_in_admin_history(request.user.pk, ids, message)

    def group_action_view(self, request: HttpRequest, verb: str) -> HttpResponse:
        allowed = {"replay": self.has_replay_permission, "discard": self.has_discard_permission}
        if verb not in allowed or not allowed[verb](request):
            raise PermissionDenied
        fingerprint = request.GET.get("fingerprint", "")
        queryset = Selection(fingerprint=fingerprint).queryset()
        response = self._confirm(request, queryset, verb, None, group=fingerprint)
        return response or HttpResponseRedirect(reverse("admin:djcelery_ops_deadletter_groups"))


def _more_than(queryset: QuerySet[DeadLetter], count: int | None) -> bool:
    """More rows than ``count`` (one query, stopped past it)."""
    return count is not None and queryset.values("pk")[count : count + 1].exists()
