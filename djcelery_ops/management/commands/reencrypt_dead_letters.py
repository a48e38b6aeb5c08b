"""Re-encrypt dead-letter payloads under the first of DJCELERY_OPS_ENCRYPTION_KEYS."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import CommandError

from djcelery_ops.crypto import SETTING, encryption_enabled, key_problem
from djcelery_ops.deadletter.reencrypt import reencrypt
from djcelery_ops.management.base import EXIT_BAD_INPUT, OpsCommand, plural

DEFAULT_BATCH_SIZE = 500


class Command(OpsCommand):
    help = (
        f"Re-encrypt stored dead-letter payloads under the first key of {SETTING} (and "
        "encrypt those stored in clear). Run after putting a new key first."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        self.add_dry_run_argument(parser)
        self.add_batch_size_argument(parser, DEFAULT_BATCH_SIZE)

    def handle(self, *args: Any, dry_run: bool, batch_size: Any, **options: Any) -> None:
        size = self.batch_size(batch_size) or DEFAULT_BATCH_SIZE
        if not encryption_enabled():
            raise CommandError(f"{SETTING} is empty: there is no key to encrypt with.")
        problem = key_problem()
        if problem:
            raise CommandError(problem)
        report = reencrypt(batch_size=size, dry_run=dry_run, progress=self._progress)
        verb = "Would re-encrypt" if dry_run else "Re-encrypted"
        self.stdout.write(
            f"{verb} {plural(report.letters, 'dead letter')} ({report.in_clear} stored in "
            f"clear) and the edits of {plural(report.replays, 'replay')}; "
            f"{report.current} already under the first key."
        )
        if report.unopenable:
            ids = ", ".join(str(pk) for pk in report.unopenable[:20])
            more = "" if len(report.unopenable) <= 20 else ", ..."
            raise CommandError(
                f"{plural(len(report.unopenable), 'dead letter')} could not be decrypted with "
                f"any key in {SETTING} (ids {ids}{more}): left as they are. Put the key they "
                "were encrypted with back in the list and run the command again.",
                returncode=EXIT_BAD_INPUT,
            )

    def _progress(self, done: int, total: int) -> None:
        self.stdout.write(f"Looked at {done}/{total} dead letters so far.")
