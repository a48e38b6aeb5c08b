"""The dead-letter services the admin, the commands and the public API call."""

from __future__ import annotations

from djcelery_ops.deadletter.discard import PURGEABLE, discard, purge, purgeable
from djcelery_ops.deadletter.groups import GROUP_COUNT_CAP, pending_groups
from djcelery_ops.deadletter.outbox import (
    ReplayError,
    celery_app,
    interrupted_replays,
    publish_options,
    recover_replays,
)
from djcelery_ops.deadletter.replay import replay, republish_original
from djcelery_ops.deadletter.selection import (
    SKIP_NOT_FOUND,
    SKIP_TRUNCATED,
    IdCursor,
    Plan,
    Selection,
    plan,
    skip_reason,
)
from djcelery_ops.deadletter.transitions import Outcome, Progress

__all__ = [
    "GROUP_COUNT_CAP",
    "IdCursor",
    "PURGEABLE",
    "SKIP_NOT_FOUND",
    "SKIP_TRUNCATED",
    "Outcome",
    "Plan",
    "Progress",
    "ReplayError",
    "Selection",
    "celery_app",
    "discard",
    "interrupted_replays",
    "pending_groups",
    "plan",
    "publish_options",
    "purge",
    "purgeable",
    "recover_replays",
    "replay",
    "republish_original",
    "skip_reason",
]
