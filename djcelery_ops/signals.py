"""Signals djcelery_ops sends, for a project (or another part of the app) to receive.

``dead_lettered``: a final failure was kept, in the database or in the spool. Sent by the
dead-letter capture with ``record`` (a ``FailureRecord``: task id and name, reason,
exception, arguments) and ``stored`` (False when the record went to the spool because the
database did not answer). Receivers run in the process that saw the failure (often a
worker's pool child), must be quick and must not raise: an exception is logged and
ignored, the dead letter is kept regardless. The job-run part listens to it to mark the
run ``dead_lettered``.
"""

from __future__ import annotations

from django.dispatch import Signal

dead_lettered = Signal()

__all__ = ["dead_lettered"]
