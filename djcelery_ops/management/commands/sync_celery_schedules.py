"""``manage.py sync_celery_schedules``: upsert DJCELERY_OPS_SCHEDULES into django-celery-beat.

Exit codes (README, "Exit codes"): 0 done or nothing to do, 1 bad input (invalid
declarations, nothing written).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandError, CommandParser

from djcelery_ops.management.base import OpsCommand, plural
from djcelery_ops.schedules.declarations import DeclarationError
from djcelery_ops.schedules.sync import Change, apply_sync, count_actions, plan_from_settings

DONE = {
    "create": "Created {name}",
    "update": "Updated {name}: {fields}",
    "overwrite": "Overwrote {name}, discarding the admin edit of: {fields}",
    "adopt": "Adopted {name} from the admin: {fields}",
    "prune": "Pruned {name} (disabled)",
}
WOULD = {
    "create": "Would create {name}",
    "update": "Would update {name}: {fields}",
    "overwrite": "Would overwrite {name}, discarding the admin edit of: {fields}",
    "adopt": "Would adopt {name} from the admin: {fields}",
    "prune": "Would prune {name} (disable)",
}
EITHER = {
    "unchanged": "Unchanged {name}",
    "drift": "Drift {name}: {fields} edited in the admin; kept (use --force to overwrite)",
    "vanished": "Not declared {name}: still enabled (use --prune to disable)",
}
SUMMARY_ORDER = (
    "create",
    "update",
    "overwrite",
    "adopt",
    "prune",
    "unchanged",
    "drift",
    "vanished",
)


class Command(OpsCommand):
    help = (
        "Create and update django-celery-beat periodic tasks from DJCELERY_OPS_SCHEDULES. "
        "Admin edits of synced rows are kept and reported as drift unless --force."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_dry_run_argument(parser)
        parser.add_argument(
            "--prune", action="store_true", help="Disable synced rows no longer declared."
        )
        parser.add_argument(
            "--force", action="store_true", help="Overwrite admin edits of synced rows."
        )

    def handle(self, *, dry_run: bool, prune: bool, force: bool, **_: Any) -> None:
        try:
            changes = plan_from_settings(prune=prune, force=force)
        except DeclarationError as exc:
            raise CommandError("Invalid schedules, nothing written:\n" + str(exc)) from exc
        for change in changes:
            self.stdout.write(describe(change, dry_run=dry_run))
        if not dry_run:
            apply_sync(changes)
        self.stdout.write(summary(changes, dry_run=dry_run))


def describe(change: Change, *, dry_run: bool) -> str:
    template = EITHER.get(change.action) or (WOULD if dry_run else DONE)[change.action]
    line = template.format(name=change.name, fields=", ".join(change.fields))
    if not dry_run:
        return line
    # A dry run is read before a deploy: show what each changed field becomes.
    return "\n".join(
        [line, *(f"  {field}: {_value(old)} -> {_value(new)}" for field, old, new in change.values)]
    )


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# What sync writes; the other actions leave the row as it is.
WRITES = frozenset(DONE)


def summary(changes: list[Change], *, dry_run: bool) -> str:
    counts = count_actions(changes)
    parts = ", ".join(f"{counts[action]} {action}" for action in SUMMARY_ORDER if counts[action])
    writes = sum(counts[action] for action in WRITES)
    if not writes:
        return f"Nothing to sync: {parts or 'no schedules declared'}."
    done = "Would sync" if dry_run else "Synced"
    return f"{done} {plural(writes, 'schedule')}: {parts}."
