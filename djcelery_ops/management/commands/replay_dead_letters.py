"""``manage.py replay_dead_letters``: republish pending dead letters, guarded.

Exit codes (README, "Exit codes"): 0 done or nothing to do, 1 bad input, 2 stopped by a
guard (canary failed or timed out, failure rate over ``--max-failure-rate``), 3 broker
unreachable, 4 interrupted with part of the rows replayed, 5 database unreachable with
part of the rows replayed. A second run continues: replayed rows are no longer pending.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import uuid
from argparse import ArgumentParser
from collections.abc import Iterator
from typing import Any

from django.core.management.base import CommandError
from django.db import DatabaseError, InterfaceError

from djcelery_ops.conf import ops_settings
from djcelery_ops.deadletter.call import BLOCKED_NEVER_DECODED
from djcelery_ops.deadletter.services import (
    IdCursor,
    Outcome,
    ReplayError,
    interrupted_replays,
    recover_replays,
    replay,
    republish_original,
)
from djcelery_ops.management.base import (
    EXIT_BROKER_UNREACHABLE,
    EXIT_DATABASE_UNREACHABLE,
    EXIT_INTERRUPTED,
    EXIT_STOPPED_BY_GUARD,
    OpsCommand,
    plural,
    positive_int_option,
)
from djcelery_ops.management.commands import _dead_letters as common
from djcelery_ops.models import DeadLetter, Replay

_RATE = re.compile(r"^(\d+(?:\.\d+)?)(?:/(s|m))?$")
_RUN_ID = re.compile(r"^[0-9a-f]{1,32}$")
POLL_INTERVAL = 0.5


def parse_rate(text: str | None) -> float | None:
    """``N/s`` or ``N/m`` (or a bare N per second) as messages per second."""
    if text is None:
        return None
    match = _RATE.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise CommandError(f"--rate: {text!r} is not a positive rate like 50/s or 600/m.")
    return float(match.group(1)) / (60 if match.group(2) == "m" else 1)


def parse_fraction(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        value = -1
    if not 0 <= value < 1 or math.isnan(value):
        raise CommandError(f"--max-failure-rate: {text!r} is not a fraction in [0, 1) or 0-99%.")
    return value


def parse_run_id(text: str | None) -> str | None:
    if text is None:
        return None
    if not _RUN_ID.match(text.strip()):
        raise CommandError(f"--run-id: {text!r} is not a run id (up to 32 hex digits).")
    return text.strip()


def database_lost(error: BaseException, run: _Run | None) -> str:
    """What a run that lost its database had done, and how to go on."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    lines = [f"Stopped: the database is unreachable ({first})."]
    if run is None:
        lines.append("No dead letter was replayed by this run.")
        return "\n".join(lines)
    lines.append(run.summary())
    lines.append(
        "Dead letters replayed above stay replayed; a batch whose commit did not reach the "
        "database was not replayed and is still pending. When the database is back, run "
        f"the same command again with --run-id {run.total.run_id} to continue this run: "
        "it replays the pending rest and first publishes again, with the same task ids, "
        "any replay committed but not confirmed by the broker."
    )
    return "\n".join(lines)


class GuardStop(Exception):
    pass


class Command(OpsCommand):
    help = "Replay pending dead letters as new tasks (guarded, resumable, rate-limited)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        common.add_filter_arguments(parser)
        common.add_actor_arguments(parser)
        parser.add_argument("--rate", help="At most this many publishes: 50/s or 600/m.")
        parser.add_argument("--canary", help="Replay this many first and wait for outcomes.")
        parser.add_argument("--canary-timeout", help="Seconds to wait for outcomes.")
        parser.add_argument(
            "--max-failure-rate",
            help="Stop when more than this fraction of finished replays failed again "
            "(0.1 or 10%%); each batch then waits for its outcomes.",
        )
        parser.add_argument(
            "--recover",
            action="store_true",
            help="Only publish again, with their own task ids, the replays an earlier run "
            "committed but the broker never confirmed (every run does this first for "
            "those older than DJCELERY_OPS_DEAD_LETTER_REPLAY_RECOVER_AFTER).",
        )
        parser.add_argument(
            "--raw-body",
            action="store_true",
            help="Republish the original message, unchanged (body, content type, encoding, "
            "headers; a new task id), of dead letters whose body was never decoded, e.g. "
            "pickle refused by a JSON worker. Use --to-queue for a worker that accepts it.",
        )
        parser.add_argument("--to-queue", help="Publish to this queue instead of the original one.")
        parser.add_argument(
            "--run-id",
            help="Record the replays under this run id (to continue a stopped run as one).",
        )

    def handle(
        self,
        *,
        dry_run: bool,
        reason: str,
        by: str | None,
        batch_size: str | None,
        rate: str | None,
        canary: str | None,
        canary_timeout: str | None,
        max_failure_rate: str | None,
        recover: bool = False,
        run_id: str | None = None,
        raw_body: bool = False,
        to_queue: str | None = None,
        **options: Any,
    ) -> None:
        run_id = parse_run_id(run_id)
        options["to_queue"] = to_queue or None
        with self._database_guard() as state:
            if raw_body:
                self._republish(dry_run, reason, by, batch_size, run_id, options)
                return
            if recover:
                self._recover(dry_run=dry_run, older_than=0)
                return
            selection = common.selection_from_options(options)
            actor = common.actor(dry_run=dry_run, reason=reason, by=by)
            size = self.batch_size(batch_size) or ops_settings.DEAD_LETTER_REPLAY_BATCH_SIZE
            per_second = parse_rate(rate)
            first = None if canary is None else positive_int_option(canary, "--canary")
            failure_limit = parse_fraction(max_failure_rate)
            timeout = self._timeout(canary_timeout)
            the_plan = common.announce_and_plan(self, "replay", selection, dry_run=dry_run)
            if the_plan is None:
                return
            self._recover(dry_run=False, older_than=None)
            # Read in keyset batches, not as one list of ids: bounded memory at any size.
            ids = IdCursor(common.matching_rows(selection))
            if per_second is not None:
                size = min(size, max(1, math.floor(per_second)))  # bursts of one second at most
            run = _Run(self, ids, the_plan.total, actor, reason, size, per_second, timeout)
            run.total.run_id = run_id or run.total.run_id
            run.queue = options["to_queue"]
            state["run"] = run
            self._go(run, first, failure_limit)
            self.stdout.write(run.summary())

    @contextlib.contextmanager
    def _database_guard(self) -> Iterator[dict[str, _Run]]:
        """Lost the database mid-run: say what was done and how to go on, exit 5."""
        state: dict[str, _Run] = {}
        try:
            yield state
        except (DatabaseError, InterfaceError) as error:
            raise CommandError(
                database_lost(error, state.get("run")), returncode=EXIT_DATABASE_UNREACHABLE
            ) from None

    def _republish(
        self,
        dry_run: bool,
        reason: str,
        by: str | None,
        batch_size: str | None,
        run_id: str | None,
        options: dict[str, Any],
    ) -> None:
        """``--raw-body``: the original messages of dead letters never decoded, unchanged."""
        selection = common.selection_from_options(options)
        actor = common.actor(dry_run=dry_run, reason=reason, by=by)
        rows = common.matching_rows(selection)
        raw = rows.filter(replay_blocker=BLOCKED_NEVER_DECODED, status=DeadLetter.Status.PENDING)
        if dry_run:
            count = raw.count()
            self.stdout.write(
                f"Would republish the original message of {plural(count, 'dead letter')}."
            )
            return
        try:
            outcome = republish_original(
                list(rows.values_list("pk", flat=True)),
                by=actor,
                reason=reason,
                queue=options["to_queue"],
                batch_size=self.batch_size(batch_size),
                run_id=run_id,
            )
        except ReplayError as error:
            raise CommandError(f"Stopped: {error}", returncode=EXIT_BROKER_UNREACHABLE) from None
        self.stdout.write(
            f"Republished the original message of {plural(outcome.published, 'dead letter')} "
            f"(run {outcome.run_id})."
        )
        for line in common.skipped_lines(dict(outcome.skipped)):
            self.stdout.write(line)

    def _recover(self, *, dry_run: bool, older_than: float | None) -> None:
        """Finish interrupted replays first: the outbox rows no broker confirmed."""
        if dry_run:
            count = interrupted_replays(older_than).count()
            self.report("recover", count, "interrupted replay", "(same task ids)", dry_run=True)
            return
        try:
            count = recover_replays(older_than=older_than)
        except ReplayError as error:
            raise CommandError(f"Stopped: {error}", returncode=EXIT_BROKER_UNREACHABLE) from None
        if count or older_than == 0:
            self.report("recover", count, "interrupted replay", "(same task ids)", dry_run=False)

    def _go(self, run: _Run, canary: int | None, max_failure_rate: float | None) -> None:
        try:
            run.go(canary, max_failure_rate)
        except GuardStop as stop:
            raise CommandError(
                f"Stopped: {stop} {run.summary()}", returncode=EXIT_STOPPED_BY_GUARD
            ) from None
        except ReplayError as error:
            if error.outcome is not None:
                common.merge(run.total, error.outcome)
            raise CommandError(
                f"Stopped: {error}. {run.summary()}", returncode=EXIT_BROKER_UNREACHABLE
            ) from None
        except KeyboardInterrupt:
            # Each batch is committed and published on its own: what is done stays done.
            raise CommandError(
                f"Interrupted. {run.summary()}\nRun the same command again to replay the "
                "rest; replayed rows are no longer pending and are not replayed twice.",
                returncode=EXIT_INTERRUPTED,
            ) from None

    def _timeout(self, text: str | None) -> float:
        if text is None:
            return float(ops_settings.DEAD_LETTER_CANARY_TIMEOUT)
        try:
            value = float(text)
        except ValueError:
            value = -1
        if not 0 < value <= 86400:
            raise CommandError(f"--canary-timeout: {text!r} is not seconds in (0, 86400].")
        return value


class _Run:
    """One run of the command: batches, throttle, canary and failure-rate guards."""

    def __init__(
        self,
        command: Command,
        ids: IdCursor,
        matched: int,
        by: str,
        reason: str,
        size: int,
        rate: float | None,
        timeout: float,
    ) -> None:
        self.command, self.ids, self.matched, self.by = command, ids, matched, by
        self.reason, self.size, self.rate, self.timeout = reason, size, rate, timeout
        self.total = Outcome(run_id=uuid.uuid4().hex, keep_ids=False)
        self.queue: str | None = None

    def go(self, canary: int | None, max_failure_rate: float | None) -> None:
        if canary:
            part = self._batch(self.ids.take(canary))
            self._wait_for_outcomes(part, "canary")
            failed = self._failed(part.new_task_ids)
            if failed:
                raise GuardStop(f"{failed} of {part.done} canary replays failed again.")
            self.command.stdout.write(f"Canary: {part.done} replays succeeded.")
        while batch := self.ids.take(self.size):
            part = self._batch(batch)
            if max_failure_rate is not None:
                self._wait_for_outcomes(part, "batch")
                self._check_failure_rate(max_failure_rate)

    def _batch(self, ids: list[int]) -> Outcome:
        started = time.monotonic()
        part = replay(
            ids,
            by=self.by,
            reason=self.reason,
            queue=self.queue,
            batch_size=self.size,
            run_id=self.total.run_id,
        )
        common.merge(self.total, part)
        skipped = sum(self.total.skipped.values())
        published = self.total.published
        self.command.stdout.write(f"Replayed {published}/{self.matched} (skipped {skipped})")
        self._throttle(part.done, started)
        return part

    def _throttle(self, done: int, started: float) -> None:
        """Each batch takes at least ``done / rate`` seconds: paced batch by batch, so a
        slow batch (a database wait) gives no credit for a burst after it."""
        if self.rate is None:
            return
        ahead = done / self.rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)

    def _wait_for_outcomes(self, part: Outcome, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        pending = Replay.objects.filter(
            new_task_id__in=part.new_task_ids, outcome=Replay.Outcome.PENDING
        )
        while pending.exists():
            if time.monotonic() > deadline:
                raise GuardStop(
                    f"{pending.count()} {what} replays had no outcome after {self.timeout:g}s."
                )
            time.sleep(POLL_INTERVAL)

    def _failed(self, task_ids: list[str]) -> int:
        return Replay.objects.filter(
            new_task_id__in=task_ids, outcome=Replay.Outcome.FAILED
        ).count()

    def _check_failure_rate(self, limit: float) -> None:
        rows = Replay.objects.filter(run_id=self.total.run_id)
        finished = rows.exclude(outcome=Replay.Outcome.PENDING).count()
        failed = rows.filter(outcome=Replay.Outcome.FAILED).count()
        if finished and failed / finished > limit:
            raise GuardStop(
                f"{failed} of {finished} finished replays failed again (over {limit:.0%})."
            )

    def summary(self) -> str:
        published = self.total.published
        lines = [f"Replayed {plural(published, 'dead letter')} (run {self.total.run_id})."]
        if self.total.done > published:
            lines.append(
                f"{self.total.done - published} more claimed, not confirmed by the broker: "
                "they stay in the outbox; the next run publishes them with the same task ids."
            )
        lines += common.skipped_lines(dict(self.total.skipped))
        return "\n".join(lines)
