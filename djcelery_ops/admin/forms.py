"""Forms of the dead-letter admin: the reason of a bulk action, edit and replay."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from djcelery_ops.conf import ops_settings
from djcelery_ops.redact import REDACTED, UnrestoredPlaceholder, restore

# Deeper than any real task argument, shallow enough for every JSON parser on the way
# (Python's json recursion, kombu, PostgreSQL's jsonb).
MAX_DEPTH = 100
# PostgreSQL's jsonb refuses both, though Python's json accepts them.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
TRUNCATION_MARKER = "__truncated__"


class ReasonForm(forms.Form):
    reason = forms.CharField(
        label=_("Reason"),
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text=_("Stored with every row changed: why this is done."),
    )


def _refuse_constant(name: str) -> Any:
    raise forms.ValidationError(
        _("%(name)s is not JSON: give a number or null."), params={"name": name}
    )


def _parse(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as error:
        raise forms.ValidationError(
            _("Invalid JSON: %(error)s"), params={"error": str(error)}
        ) from None


def _too_deep() -> forms.ValidationError:
    return forms.ValidationError(
        _("Nested more than %(depth)d levels deep."), params={"depth": MAX_DEPTH}
    )


def _check_values(value: Any, *, marker_allowed: bool) -> None:
    """Walk the parsed value without recursion: depth, storable text, no marker."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            _refuse_constant(str(item))  # 1e999 parses as inf
        elif isinstance(item, dict):
            if TRUNCATION_MARKER in item and not marker_allowed:
                raise forms.ValidationError(
                    _("This is the preview of a truncated payload, not the task's arguments.")
                )
            for key in item:
                _check_text(key)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    if _UNSTORABLE.search(text):
        raise forms.ValidationError(
            _("Text may not contain NUL (\\u0000) or lone surrogates (\\ud800-\\udfff).")
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

    def __init__(
        self, *args: Any, truncated: bool = False, stored: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        # A truncated dead letter stores a marked preview, not the call: the operator
        # types the complete arguments; the marker must never be published as one.
        self.truncated = truncated
        # The dead letter's payload (decrypted): its args/kwargs replace the "[redacted]"
        # placeholders the form showed, where the operator left them as shown.
        self.stored = stored

    def _json(self, name: str, kind: type, kind_name: str) -> Any:
        text = self.cleaned_data[name]
        limit = ops_settings.DEAD_LETTER_MAX_PAYLOAD_BYTES
        if len(text.encode()) > limit:
            raise forms.ValidationError(
                _("Over the size cap of %(limit)d bytes."), params={"limit": limit}
            )
        value = _parse(text)
        if not isinstance(value, kind):
            raise forms.ValidationError(_("Must be a JSON %(kind)s."), params={"kind": kind_name})
        _check_values(value, marker_allowed=not self.truncated)
        return self._unredact(name, value)

    def _unredact(self, name: str, value: Any) -> Any:
        original = getattr(self.stored, name, None) if not self.truncated else None
        try:
            return restore(value, original)
        except UnrestoredPlaceholder:
            raise forms.ValidationError(
                _(
                    "%(placeholder)s stands for a stored secret only where it was shown: "
                    "type the value here."
                ),
                params={"placeholder": REDACTED},
            ) from None

    def clean_args(self) -> list[Any]:
        value: list[Any] = self._json("args", list, "list")
        return value

    def clean_kwargs(self) -> dict[str, Any]:
        value: dict[str, Any] = self._json("kwargs", dict, "object")
        return value
