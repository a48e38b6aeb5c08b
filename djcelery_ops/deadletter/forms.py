"""Forms of the dead-letter admin: the reason of a bulk action, edit and replay."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from djcelery_ops.conf import ops_settings


class ReasonForm(forms.Form):
    reason = forms.CharField(
        label=_("Reason"),
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text=_("Stored with every row changed: why this is done."),
    )


class EditReplayForm(ReasonForm):
    args = forms.CharField(
        label=_("Args (JSON list)"), widget=forms.Textarea(attrs={"rows": 6, "cols": 80})
    )
    kwargs = forms.CharField(
        label=_("Kwargs (JSON object)"), widget=forms.Textarea(attrs={"rows": 6, "cols": 80})
    )
    queue = forms.CharField(
        label=_("Queue"),
        max_length=255,
        required=False,
        help_text=_("Empty: the queue the task was published to."),
    )

    def _json(self, name: str, kind: type, kind_name: str) -> Any:
        text = self.cleaned_data[name]
        limit = ops_settings.DEAD_LETTER_MAX_PAYLOAD_BYTES
        if len(text.encode()) > limit:
            raise forms.ValidationError(
                _("Over the size cap of %(limit)d bytes."), params={"limit": limit}
            )
        try:
            value = json.loads(text)
        except ValueError as error:
            raise forms.ValidationError(
                _("Invalid JSON: %(error)s"), params={"error": str(error)}
            ) from None
        if not isinstance(value, kind):
            raise forms.ValidationError(_("Must be a JSON %(kind)s."), params={"kind": kind_name})
        return value

    def clean_args(self) -> list[Any]:
        value: list[Any] = self._json("args", list, "list")
        return value

    def clean_kwargs(self) -> dict[str, Any]:
        value: dict[str, Any] = self._json("kwargs", dict, "object")
        return value
