"""Options and parsing shared by the dead-letter commands (not a command: leading ``_``).

Values are parsed here, not by argparse ``type=``, so that every bad value is a
``CommandError`` (exit code 1) with one clear message, never argparse's exit code 2,
which the replay command keeps for "stopped by a guard".
"""

from __future__ import annotations

import datetime
import getpass
from argparse import ArgumentParser
from collections.abc import Iterable
from typing import Any

from django.core.management.base import CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from djcelery_ops.deadletter.services import Outcome, Plan, Selection
from djcelery_ops.management.base import duration_option, looks_like_duration, positive_int_option

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_STOPPED_BY_GUARD = 2
EXIT_PUBLISH_FAILED = 3

MAX_IDS = 10_000


def add_filter_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--task", help="Task name, exactly.")
    parser.add_argument(
        "--failure-reason", help="Why the task failed for good (exception, worker_lost, ...)."
    )
    parser.add_argument("--exception", help="Exception class, dotted path, exactly.")
    parser.add_argument("--fingerprint", help="Failure group (see the grouped admin view).")
    parser.add_argument("--queue", help="Queue the message was published to.")
    parser.add_argument("--since", help="Last failed at or after: ISO date/time or 7d, 12h.")
    parser.add_argument("--until", help="Last failed before: ISO date/time or 7d, 12h.")
    parser.add_argument(
        "--id", action="append", default=[], dest="ids", help="Dead letter id (repeatable)."
    )
    parser.add_argument("--limit", help="At most this many dead letters (oldest id first).")
    parser.add_argument("--batch-size", help="Rows per transaction and publish batch.")
    parser.add_argument("--dry-run", action="store_true", help="Print what would be done.")


def add_actor_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--reason", default="", help="Why (stored; required unless --dry-run).")
    parser.add_argument("--by", default=None, help="Who, for the record (default: OS user).")


def parse_moment(text: str | None, option: str) -> datetime.datetime | None:
    if text is None:
        return None
    if looks_like_duration(text):
        return timezone.now() - duration_option(text, option)
    try:
        moment = parse_datetime(text)
        day = None if moment else parse_date(text)
    except ValueError:
        moment = day = None
    if day is not None:
        moment = datetime.datetime.combine(day, datetime.time())
    if moment is None:
        raise CommandError(
            f"{option}: {text!r} is not a date (YYYY-MM-DD, ISO 8601 date-time, or 7d, 12h)."
        )
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment)


def parse_positive_int(text: Any, option: str, *, allow_none: bool = True) -> int | None:
    if text is None and allow_none:
        return None
    return positive_int_option(text, option)


def parse_ids(texts: Iterable[str]) -> tuple[int, ...]:
    texts = list(texts)
    if len(texts) > MAX_IDS:
        raise CommandError(f"--id: at most {MAX_IDS} ids, got {len(texts)}; use filters.")
    ids = []
    for text in texts:
        value = parse_positive_int(text, "--id", allow_none=False)
        assert value is not None
        ids.append(value)
    return tuple(sorted(set(ids)))


def selection_from_options(options: dict[str, Any]) -> Selection:
    try:
        return Selection(
            task=options["task"],
            failure_reason=options["failure_reason"],
            exception=options["exception"],
            fingerprint=options["fingerprint"],
            queue=options["queue"],
            since=parse_moment(options["since"], "--since"),
            until=parse_moment(options["until"], "--until"),
            ids=parse_ids(options["ids"]),
            limit=parse_positive_int(options["limit"], "--limit"),
        )
    except ValueError as error:
        raise CommandError(str(error)) from None


def actor_from_options(options: dict[str, Any]) -> str:
    if not options["dry_run"] and not options["reason"].strip():
        raise CommandError("--reason is required (it is stored with what is done).")
    return str(options["by"] or getpass.getuser())


def plan_lines(verb: str, plan: Plan) -> list[str]:
    lines = [f"Would {verb} {plan.applicable} dead letter{'s' * (plan.applicable != 1)}:"]
    width = max((len(str(count)) for _task, count in plan.per_task), default=1)
    lines += [f"  {count:>{width}}  {task}" for task, count in plan.per_task]
    lines += skipped_lines(dict(plan.skipped))
    return lines


def skipped_lines(skipped: dict[str, int]) -> list[str]:
    if not skipped:
        return []
    details = ", ".join(f"{reason} {count}" for reason, count in sorted(skipped.items()))
    return [f"Skipped {sum(skipped.values())}: {details}"]


def merge(total: Outcome, part: Outcome) -> None:
    total.done += part.done
    total.per_task.update(part.per_task)
    total.skipped.update(part.skipped)
    total.dead_letter_ids += part.dead_letter_ids
    total.new_task_ids += part.new_task_ids
