"""The dead-letter services the admin, the commands and the public API call."""

from __future__ import annotations

from djcelery_ops.deadletter.discard import PURGEABLE, discard, purge
from djcelery_ops.deadletter.replay import ReplayError, celery_app, publish_options, replay
from djcelery_ops.deadletter.selection import (
    SKIP_NOT_FOUND,
    SKIP_TRUNCATED,
    Plan,
    Selection,
    plan,
    skip_reason,
)
from djcelery_ops.deadletter.transitions import Outcome

__all__ = [
    "PURGEABLE",
    "SKIP_NOT_FOUND",
    "SKIP_TRUNCATED",
    "Outcome",
    "Plan",
    "ReplayError",
    "Selection",
    "celery_app",
    "discard",
    "plan",
    "publish_options",
    "purge",
    "replay",
    "skip_reason",
]
