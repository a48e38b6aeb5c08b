"""Signals djcelery_ops sends, for a project (or another part of the app) to receive.

``dead_lettered``: a final failure was kept, in the database or in the spool. Sent by the
dead-letter capture with ``record`` (a ``FailureRecord``: task id and name, reason,
exception, arguments) and ``stored`` (False when the record went to the spool because the
database did not answer). Receivers run in the process that saw the failure (often a
worker's pool child), must be quick and must not raise: an exception is logged and
ignored, the dead letter is kept regardless. The job-run part listens to it to mark the
run ``dead_lettered``.

The others are counts for the metrics (``djcelery_ops.metrics`` receives them; a project
may too). Each is sent with ``send_robust`` by the part that did the work, so a receiver
that raises changes nothing:

``replays_published``: ``published`` and ``unconfirmed`` (the broker failed; those stay in
the outbox) replays of one publishing pass, and ``skipped`` dead letters a replay left.
``dead_letters_discarded``: ``discarded`` and ``skipped`` (not pending) dead letters.
``duplicate_suppressed``: ``task_name`` ran with an idempotency key already done; the body
did not run, the stored result was returned.
``beat_leadership_changed``: ``leading`` (True: this beat process took the lease; False:
it stepped down).
``run_events_dropped``: ``count`` job-run events given up for ``reason`` (``buffer_full``,
``refused``, ``database_away``).
``run_events_flushed``: the job-run recorder wrote a batch (or failed to); ``backlog`` is
how many task ids still wait in this process's buffer.
"""

from __future__ import annotations

from django.dispatch import Signal

dead_lettered = Signal()
replays_published = Signal()
dead_letters_discarded = Signal()
duplicate_suppressed = Signal()
beat_leadership_changed = Signal()
run_events_dropped = Signal()
run_events_flushed = Signal()

__all__ = [
    "beat_leadership_changed",
    "dead_letters_discarded",
    "dead_lettered",
    "duplicate_suppressed",
    "replays_published",
    "run_events_dropped",
    "run_events_flushed",
]
