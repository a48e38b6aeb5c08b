"""Options, parsing and wording shared by the dead-letter commands (not a command: ``_``).

Values are parsed with ``OpsCommand``'s parsers, so every bad value is a ``CommandError``
(exit code 1) with one clear message.
"""

from __future__ import annotations

import getpass
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError
from django.db.models import QuerySet

from djcelery_ops.deadletter.services import Outcome, Plan, Selection, plan
from djcelery_ops.management.base import OpsCommand, plural, positive_int_option
from djcelery_ops.models import DeadLetter

NOTHING_MATCHES = "no pending dead letters match"


def add_filter_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--task", help="Task name, exactly.")
    parser.add_argument(
        "--failure-reason", help="Why the task failed for good (exception, worker_lost, ...)."
    )
    parser.add_argument(
        "--exception", help="Exception class: dotted (builtins.KeyError) or short (KeyError)."
    )
    parser.add_argument("--fingerprint", help="Failure group (see the grouped admin view).")
    parser.add_argument("--queue", help="Queue the message was published to.")
    OpsCommand.add_window_arguments(parser, "Last failed")
    OpsCommand.add_id_argument(parser, "Dead letter")
    parser.add_argument("--limit", help="At most this many dead letters (oldest id first).")
    OpsCommand.add_batch_size_argument(parser, None)
    OpsCommand.add_dry_run_argument(parser)


def add_actor_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--reason", default="", help="Why (stored; required unless --dry-run).")
    parser.add_argument("--by", default=None, help="Who, for the record (default: OS user).")


def selection_from_options(options: dict[str, Any]) -> Selection:
    try:
        return Selection(
            task=options["task"],
            failure_reason=options["failure_reason"],
            exception=options["exception"],
            fingerprint=options["fingerprint"],
            queue=options["queue"],
            since=OpsCommand.moment(options["since"], "--since"),
            until=OpsCommand.moment(options["until"], "--until"),
            ids=OpsCommand.ids(options["ids"]),
            limit=limit_option(options["limit"]),
        )
    except ValueError as error:
        raise CommandError(str(error)) from None


def limit_option(text: str | None) -> int | None:
    return None if text is None else positive_int_option(text, "--limit")


def actor(*, dry_run: bool, reason: str, by: str | None) -> str:
    """Who acts, for the record; a real run must also say why."""
    if not dry_run and not reason.strip():
        raise CommandError("--reason is required (it is stored with what is done).")
    return by or getpass.getuser()


def plan_lines(verb: str, the_plan: Plan) -> list[str]:
    lines = [f"Would {verb} {plural(the_plan.applicable, 'dead letter')}:"]
    width = max((len(str(count)) for _task, count in the_plan.per_task), default=1)
    lines += [f"  {count:>{width}}  {task}" for task, count in the_plan.per_task]
    lines += skipped_lines(dict(the_plan.skipped))
    return lines


def skipped_lines(skipped: dict[str, int]) -> list[str]:
    if not skipped:
        return []
    details = ", ".join(f"{reason} {count}" for reason, count in sorted(skipped.items()))
    return [f"Skipped {sum(skipped.values())}: {details}"]


def merge(total: Outcome, part: Outcome) -> None:
    total.done += part.done
    total.published += part.published
    total.per_task.update(part.per_task)
    total.skipped.update(part.skipped)
    total.add_ids(part.dead_letter_ids, part.new_task_ids)


def matching_rows(selection: Selection) -> QuerySet[DeadLetter]:
    # Ids name rows on purpose: the service then says why a non-pending one is skipped.
    return selection.queryset(status=None if selection.ids else DeadLetter.Status.PENDING)


def missing_ids(selection: Selection) -> list[int]:
    found = DeadLetter.objects.filter(pk__in=selection.ids).values_list("pk", flat=True)
    return sorted(set(selection.ids) - set(found))


def announce(command: OpsCommand, verb: str, selection: Selection, action: str) -> Plan:
    """Print missing ids, and "Nothing to ..." when nothing applies; dry run and real run."""
    for pk in missing_ids(selection):
        command.stdout.write(f"not found: {pk}")
    the_plan = plan(matching_rows(selection), action=action)
    if not the_plan.applicable:
        command.nothing_to_do(verb, NOTHING_MATCHES)
        for line in skipped_lines(dict(the_plan.skipped)):
            command.stdout.write(line)
    return the_plan


def announce_and_plan(
    command: OpsCommand, verb: str, selection: Selection, *, dry_run: bool
) -> Plan | None:
    """Say what matches; on a dry run print the plan. The plan when there is work to do now
    (its ``total``, the rows matched, is what progress lines count up to)."""
    the_plan = announce(command, verb, selection, action=verb)
    if not the_plan.applicable:
        return None
    if dry_run:
        for line in plan_lines(verb, the_plan):
            command.stdout.write(line)
        return None
    return the_plan
