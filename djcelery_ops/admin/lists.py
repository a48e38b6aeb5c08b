"""Changelist pieces for tables of millions of rows, shared by the runs and dead-letter admins.

- ``CappedCountPaginator``: counts at most ``cap + 1`` rows (an exact count costs seconds);
  the app's ``pagination.html`` then says "more than 10,000". ``CappedCountMixin`` puts
  it on a ModelAdmin and raises the cap for a deep page; on PostgreSQL, outside a
  transaction, ``count_timeout_ms`` gives the count up after that long ("not counted").
- ``DistinctValuesFilter``: a column's values from an index skip scan
  (``db.distinct_column_values``), not ``SELECT DISTINCT`` over the whole table.
- ``within_filter``: "last hour / 24 hours / 7 days" on a time column: one range condition
  an index serves, where a date hierarchy reads the whole table for its MIN/MAX and days.
- ``PlainCheckboxMixin``: the action checkbox of each row without a form widget.
- ``ExactSearchMixin``: the search box matches whole values of indexed columns, case
  sensitive; Django's ``icontains`` search is ``UPPER(col) LIKE '%...%'`` over every row.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Sequence
from typing import Any, ClassVar

from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.views.main import PAGE_VAR
from django.core.paginator import Paginator
from django.db import OperationalError, connections, transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import get_language, gettext
from django.utils.translation import gettext_lazy as _

from djcelery_ops.db import distinct_column_values

COUNT_CAP = 10_000
QUERY_CANCELED = "57014"  # PostgreSQL's SQLSTATE of a statement_timeout


class CappedCountPaginator(Paginator):  # type: ignore[type-arg]
    """Counts at most ``cap + 1`` rows: an exact count of millions costs seconds.

    The changelist's pagination template reads ``cl.paginator.cap`` to say "more than".
    """

    cap = COUNT_CAP
    timeout_ms: int | None = None
    counted = True  # False: the count was given up after ``timeout_ms``

    @cached_property
    def count(self) -> int:
        # Unordered: the database may stop after cap + 1 matches, in any index's order.
        everything: Any = self.object_list
        rows = everything.order_by()[: self.cap + 1]
        connection = connections[rows.db]
        if not self.timeout_ms or connection.vendor != "postgresql" or connection.in_atomic_block:
            return int(rows.count())
        return self._count_within_timeout(rows, connection)

    def _count_within_timeout(self, rows: Any, connection: Any) -> int:
        """Filters that match rows all over the table (several columns of few values) make
        each counted row a heap read: give up after ``timeout_ms`` and say "not counted".

        ``SET LOCAL`` lasts for this transaction only, so only outside an atomic block.
        """
        try:
            with transaction.atomic(using=rows.db), connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('statement_timeout', %s, true)", [str(self.timeout_ms)]
                )
                return int(rows.count())
        except OperationalError as error:
            if getattr(error.__cause__, "sqlstate", None) != QUERY_CANCELED:
                raise
        self.counted = False
        return self.cap + 1


class CappedCountMixin:
    """Uses ``CappedCountPaginator``; a deep page (``?p=500``) raises its cap to reach it.

    The count then stops at the rows up to that page, still far from the whole table.
    ``count_cap``: this admin's cap (None: the paginator's ``COUNT_CAP``).
    """

    paginator: ClassVar[type] = CappedCountPaginator
    count_cap: int | None = None
    count_timeout_ms: int | None = None

    def get_paginator(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        paginator = super().get_paginator(request, *args, **kwargs)  # type: ignore[misc]
        if not isinstance(paginator, CappedCountPaginator):
            return paginator
        if self.count_cap is not None:
            paginator.cap = self.count_cap
        paginator.timeout_ms = self.count_timeout_ms
        page = request.GET.get(PAGE_VAR, "")
        if page.isdigit():
            paginator.cap = max(paginator.cap, int(page) * paginator.per_page)
        return paginator


class DistinctValuesFilter(admin.SimpleListFilter):
    """A column's values from an index walk, not a DISTINCT over the whole table.

    Read when the filter is drawn, not when the changelist is built: an action's POST
    builds the changelist (twice) and draws no filter.
    """

    column = ""

    def __init__(self, request: HttpRequest, params: Any, model: Any, model_admin: Any) -> None:
        self._model = model_admin.model
        self._choices: list[tuple[str, str]] | None = None
        super().__init__(request, params, model, model_admin)

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return []  # read lazily: ``lookup_choices``

    @property  # type: ignore[override]
    def lookup_choices(self) -> list[tuple[str, str]]:
        if self._choices is None:
            self._choices = [(v, v) for v in distinct_column_values(self._model, self.column)]
        return self._choices

    @lookup_choices.setter
    def lookup_choices(self, _value: Any) -> None:
        pass  # SimpleListFilter.__init__ stores ``lookups()``; the property reads later

    def has_output(self) -> bool:
        return True  # "All" at least; asking would read the values now

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{self.column: value}) if value else queryset


def distinct_filter(column: str, title: Any) -> type[DistinctValuesFilter]:
    """A ``DistinctValuesFilter`` of ``column``, its query parameter named like the column."""
    attributes = {"title": title, "parameter_name": column, "column": column}
    name = "".join(part.title() for part in column.split("_")) + "Filter"
    return type(name, (DistinctValuesFilter,), attributes)


class WithinFilter(admin.SimpleListFilter):
    """Rows whose ``column`` is within the last hour, 24 hours or 7 days."""

    column = ""
    WINDOWS = {"1h": 1, "24h": 24, "7d": 24 * 7}

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("1h", _("last hour")), ("24h", _("last 24 hours")), ("7d", _("last 7 days"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        hours = self.WINDOWS.get(self.value() or "")
        if hours is None:
            return queryset
        since = timezone.now() - datetime.timedelta(hours=hours)
        return queryset.filter(**{f"{self.column}__gte": since})


def within_filter(column: str, title: Any, parameter_name: str) -> type[WithinFilter]:
    attributes = {"title": title, "parameter_name": parameter_name, "column": column}
    name = "".join(part.title() for part in parameter_name.split("_")) + "Filter"
    return type(name, (WithinFilter,), attributes)


class PlainCheckboxMixin:
    """Cheaper rows: the changelist's action checkbox as one ``format_html``, the same
    HTML as Django's ``ModelAdmin.action_checkbox``, which renders a form widget through
    the template engine for each row (a third of a 50-row page's rendering time); and the
    empty-cell text as a plain string (Django's is a lazy translation, looked up per cell).
    """

    empty_value_display = "-"

    def action_checkbox(self, obj: Any) -> SafeString:
        label = format_html(_checkbox_label(get_language()), str(obj))
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            helpers.ACTION_CHECKBOX_NAME, str(obj.pk), label,
        )  # fmt: skip


@functools.cache
def _checkbox_label(language: str | None) -> str:
    return gettext("Select this object for an action - {}")


class ExactSearchMixin:
    """Search by whole values of ``search_fields`` (``=`` on each, OR-ed): index lookups.

    The admin's own ``"=field"`` is ``iexact``, ``UPPER(col) = UPPER(...)``, which no plain
    index serves.
    """

    search_fields: ClassVar[Sequence[str]]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q()
        for field in self.search_fields:
            match |= Q(**{field: term})
        return queryset.filter(match), False
