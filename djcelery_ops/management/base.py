"""The base of every djcelery_ops command: options, parsing, wording and exit codes.

Every command parses ``--batch-size``, ages (``--older-than``), moments (``--since``,
``--until``) and ids (``--id``) with the one implementation here, words its result the
same way ("Would purge 3 task runs ..." / "Purged 3 task runs ..." / "Nothing to purge:
...") and ends with one of the exit codes below, documented once in the README.

Values are parsed in ``handle`` (not by argparse ``type=``) so that a value given to
``call_command`` as a keyword gets the same checks and the same message as one typed on
the command line.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import sys
from argparse import ArgumentParser
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import InterfaceError, OperationalError
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from djcelery_ops.db import BatchedDelete, delete_in_batches

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_STOPPED_BY_GUARD = 2
EXIT_BROKER_UNREACHABLE = 3
EXIT_INTERRUPTED = 4
EXIT_DATABASE_UNREACHABLE = 5  # lost the database mid-run: part done, the summary says what
EXIT_UNHEALTHY = 6  # celery_ops_status --health: the reason is on one line

MAX_IDS = 10_000

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# Six digits at most: 999999w still fits a timedelta; more would overflow, not fail cleanly.
_DURATION = re.compile(r"^(\d{1,6})([smhdw])$")
# Ages past this are typos (99999d is 273 years) and would put cutoffs before year 1.
MAX_AGE = timedelta(days=36_500)
# Rows per transaction: beyond this one statement holds locks for too long.
MAX_BATCH_SIZE = 1_000_000


def parse_duration(text: str, option: str = "--older-than") -> timedelta:
    """``90s``, ``30m``, ``12h``, ``14d``, ``2w``; ValueError names the option otherwise."""
    match = _DURATION.match(str(text).strip())
    if not match or int(match[1]) == 0:
        raise ValueError(
            f"{option} {text!r} is not a positive duration such as 90s, 30m, 12h, 14d or 2w."
        )
    age = timedelta(**{_UNITS[match[2]]: int(match[1])})
    if age > MAX_AGE:
        raise ValueError(f"{option} {text!r} is longer than {MAX_AGE.days} days.")
    return age


def duration_option(text: str, option: str = "--older-than") -> timedelta:
    """``parse_duration`` for a management command: bad input is a ``CommandError``."""
    try:
        return parse_duration(text, option)
    except ValueError as error:
        raise CommandError(str(error)) from error


def positive_int_option(text: Any, option: str, *, maximum: int | None = None) -> int:
    """A whole number of at least 1 for a management command; otherwise a ``CommandError``."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise CommandError(f"{option}: {text!r} is not a whole number.") from None
    if value < 1:
        raise CommandError(f"{option} must be at least 1, not {value}.")
    if maximum is not None and value > maximum:
        raise CommandError(f"{option} must be at most {maximum}, not {value}.")
    return value


def looks_like_duration(text: str) -> bool:
    return bool(_DURATION.match(text.strip()))


def moment_option(text: str | None, option: str) -> datetime.datetime | None:
    """An ISO date or date-time, or an age (``7d``) before now; never in the future."""
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
    moment = moment if timezone.is_aware(moment) else timezone.make_aware(moment)
    if option == "--since" and moment > timezone.now():
        # Nothing can have happened after a moment that has not come yet: surely a typo.
        raise CommandError(f"--since: {text!r} is in the future.")
    return moment


def ids_option(texts: Iterable[Any], option: str = "--id") -> tuple[int, ...]:
    """Row ids, each a positive whole number, at most ``MAX_IDS``; sorted, no repeats."""
    texts = list(texts)
    if len(texts) > MAX_IDS:
        raise CommandError(f"{option}: at most {MAX_IDS} ids, got {len(texts)}; use filters.")
    return tuple(sorted({positive_int_option(text, option) for text in texts}))


def plural(count: int, thing: str) -> str:
    """``1 task run``, ``2 task runs``: ``thing`` is the singular."""
    return f"{count} {thing}{'' if count == 1 else 's'}"


def past_tense(verb: str) -> str:
    """Every verb the commands use is regular: purge -> purged, replay -> replayed,
    copy -> copied."""
    if verb.endswith("y") and verb[-2:-1] not in ("a", "e", "o", "u"):
        return verb[:-1] + "ied"
    return verb + ("d" if verb.endswith("e") else "ed")


class OpsCommand(BaseCommand):
    """Base of the djcelery_ops commands; see the module docstring."""

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # argparse exits 2 on a usage error, which here means "stopped by a guard". Told it
        # was not called from the command line, Django's parser raises CommandError (exit 1)
        # instead; run_from_argv turns that into one line on stderr.
        parser.called_from_command_line = False
        return parser

    def run_from_argv(self, argv: list[str]) -> None:
        try:
            super().run_from_argv(argv)
        except CommandError as error:
            # Django handles the errors of execute() itself and re-raises them only for
            # --traceback; what reaches here otherwise comes from parsing the arguments.
            if "--traceback" in argv:
                raise
            message = str(error).removeprefix("Error: ")
            usage = f"see {argv[0].rsplit('/', 1)[-1]} {argv[1]} --help"
            self.stderr.write(f"CommandError: {message} ({usage})")
            sys.exit(error.returncode)

    verbosity = 1

    def execute(self, *args: Any, **options: Any) -> str | None:
        self.verbosity = int(options.get("verbosity", 1))
        try:
            return super().execute(*args, **options)
        except KeyboardInterrupt:
            # Work is done in committed batches: the progress printed so far is what stands.
            raise CommandError(
                "Interrupted; the batches reported above are done. "
                "Run the command again to do the rest.",
                returncode=EXIT_INTERRUPTED,
            ) from None

    # Options every command spells the same way.
    @staticmethod
    def add_dry_run_argument(parser: ArgumentParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Print what would be done.")

    @staticmethod
    def add_batch_size_argument(parser: ArgumentParser, default: int | None) -> None:
        shown = f" (default: {default})" if default else ""
        parser.add_argument("--batch-size", default=default, help=f"Rows per transaction{shown}.")

    @staticmethod
    def add_older_than_argument(parser: ArgumentParser, what: str) -> None:
        parser.add_argument("--older-than", required=True, help=f"{what}: 90m, 12h, 30d, 2w.")

    @staticmethod
    def add_window_arguments(parser: ArgumentParser, what: str) -> None:
        parser.add_argument("--since", help=f"{what} at or after: ISO date/time or 7d, 12h.")
        parser.add_argument("--until", help=f"{what} before: ISO date/time or 7d, 12h.")

    @staticmethod
    def add_id_argument(parser: ArgumentParser, what: str) -> None:
        parser.add_argument(
            "--id", action="append", default=[], dest="ids", help=f"{what} id (repeatable)."
        )

    # Parsing, one implementation each (functions above, so services can use them too).
    @staticmethod
    def batch_size(text: Any) -> int | None:
        if text is None:
            return None
        return positive_int_option(text, "--batch-size", maximum=MAX_BATCH_SIZE)

    @staticmethod
    def older_than(text: str) -> datetime.datetime:
        """The cutoff: now minus the age given to ``--older-than``."""
        return timezone.now() - duration_option(text, "--older-than")

    @staticmethod
    def moment(text: str | None, option: str) -> datetime.datetime | None:
        return moment_option(text, option)

    @staticmethod
    def ids(texts: Iterable[Any]) -> tuple[int, ...]:
        return ids_option(texts)

    # Wording: the same result reads the same in a dry run and a real run.
    def report(self, verb: str, count: int, thing: str, detail: str, *, dry_run: bool) -> None:
        """``Would purge 3 task runs older than 14d.`` / ``Purged 3 ...`` / ``Nothing ...``."""
        if count == 0:
            self.nothing_to_do(verb, f"no {thing}s {detail}")
            return
        done = f"Would {verb}" if dry_run else past_tense(verb).capitalize()
        self.stdout.write(f"{done} {plural(count, thing)} {detail}.")

    def nothing_to_do(self, verb: str, why: str) -> None:
        self.stdout.write(f"Nothing to {verb}: {why}.")

    def progress(
        self, verb: str, done: int, total: int, thing: str, stats: BatchedDelete | None = None
    ) -> None:
        things = plural(total, thing).split(" ", 1)[1]
        line = f"{past_tense(verb).capitalize()} {done}/{total} {things} so far"
        if stats is not None and self.verbosity >= 2:
            line += f" ({stats.rate:,.0f} rows/s, longest batch {stats.longest:.3f} s)"
        self.stdout.write(line + ".")

    def timing(self, stats: BatchedDelete) -> None:
        """``-v 2``: the rate and the longest batch transaction (the longest lock held)."""
        if self.verbosity >= 2:
            self.stdout.write(
                f"Took {stats.elapsed:.1f} s: {stats.rate:,.0f} rows/s, "
                f"{stats.batches} batch{'' if stats.batches == 1 else 'es'}, "
                f"longest batch {stats.longest:.3f} s."
            )

    @contextlib.contextmanager
    def stopping_cleanly(
        self, stats: BatchedDelete, thing: str, detail: str, verb: str = "purge"
    ) -> Iterator[None]:
        """Ctrl-C (exit 4) or a lost database (exit 5) mid-purge: say what is done."""
        try:
            yield
        except KeyboardInterrupt:
            done = f"{plural(stats.deleted, thing)} {detail} {past_tense(verb)}"
            raise CommandError(
                f"Interrupted: {done}; each batch reported above is committed. "
                f"Run the command again to {verb} the rest.",
                returncode=EXIT_INTERRUPTED,
            ) from None
        except (OperationalError, InterfaceError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            done = f"{plural(stats.deleted, thing)} {detail} {past_tense(verb)}"
            raise CommandError(
                f"Stopped: the database is unreachable ({first}). {done}; a batch whose "
                "commit did not reach the database was rolled back. When the database is "
                f"back, run the command again to {verb} the rest.",
                returncode=EXIT_DATABASE_UNREACHABLE,
            ) from None

    def purge_rows(
        self, rows: QuerySet[Any], thing: str, detail: str, *, batch_size: int, dry_run: bool
    ) -> None:
        """Delete ``rows`` in batches with progress, or say what a dry run would delete."""
        total = rows.count()
        if dry_run or not total:
            self.report("purge", total, thing, detail, dry_run=dry_run)
            return
        stats = BatchedDelete()
        with self.stopping_cleanly(stats, thing, detail):
            for deleted in delete_in_batches(rows, batch_size, stats):
                self.progress("purge", deleted, total, thing, stats)
        self.report("purge", stats.deleted, thing, detail, dry_run=False)
        self.timing(stats)
