"""``QuietDatabaseScheduler``: django-celery-beat's DatabaseScheduler with cheap ticks.

With 10,000 periodic tasks most of a stock tick was not the dispatch but bookkeeping:

- Celery compares the schedule the heap was built from with the current one, entry by
  entry, on every tick. django-celery-beat replaces the whole dict when it reloads the
  schedule (a change, or every 5 minutes), so the same dict means nothing changed and the
  comparison is skipped.
- django-celery-beat calls ``close_old_connections`` on every tick, which with Django's
  default ``CONN_MAX_AGE = 0`` opens a new database connection each time. The connection
  is kept instead while it works (``connections.close_broken_connections``).
- Each tick asks the database whether the schedule changed. During a burst of due
  entries (one dispatch per tick, ``in_burst``) it asks once a second only.

An idle tick is then one small query and a look at the top of the heap.
"""

from __future__ import annotations

import time
from typing import Any

from django_celery_beat.schedulers import DatabaseScheduler

from djcelery_ops.connections import close_broken_connections

# How long a burst of dispatches may go without looking for schedule changes.
CHANGES_CHECK_SECONDS = 1.0


class QuietDatabaseScheduler(DatabaseScheduler):  # type: ignore[misc]
    """A DatabaseScheduler whose idle tick is one small query and a look at the heap."""

    _heap_source: dict[str, Any] | None = None
    _changes_checked_at = 0.0

    def in_burst(self) -> bool:
        """True while due entries are being dispatched one after another."""
        return False

    def keep_connection(self) -> None:
        close_broken_connections()

    def schedule_changed(self) -> bool:
        checked = time.monotonic()
        if self.in_burst() and checked - self._changes_checked_at < CHANGES_CHECK_SECONDS:
            return False
        self._changes_checked_at = checked
        # Before django-celery-beat's ``close_old_connections``, which then keeps it too.
        self.keep_connection()
        return bool(super().schedule_changed())

    def populate_heap(self, *args: Any, **kwargs: Any) -> None:
        super().populate_heap(*args, **kwargs)
        self._heap_source = self._schedule

    def schedules_equal(self, old_schedules: Any, new_schedules: Any) -> bool:
        unchanged = new_schedules is not None and new_schedules is self._heap_source
        if unchanged and not self._heap_invalidated:
            return True
        return bool(super().schedules_equal(old_schedules, new_schedules))
