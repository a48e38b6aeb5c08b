"""Seed a million dead letters into PostgreSQL, then time every page of their admin.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dlbench \
    .venv/bin/python bench/seed_dead_letters.py --rows 1000000   # seed, then measure
    .venv/bin/python bench/seed_dead_letters.py --measure-only    # measure what is there
    .venv/bin/python bench/seed_dead_letters.py --drop            # delete the seeded rows

Rows spread over the last 30 days, 20 task names, 10 exception classes, 3 queues, 5
reasons; 90 % pending, the rest replayed, resolved or discarded. Half of all rows are one
failure group (``app.tasks.job_00`` / ``builtins.ValueError``): the "select all 500,000"
and whole-group pages work on it. One row in ten has a root id. Task ids are UUIDs, as
Celery's are: ``md5('dl' || n)::uuid``. Each figure is the median (and max) of 5 requests
after one warm-up, with the number of SQL queries it made and the time they took in the
database (``bench/seed_runs.py timed``): on a loaded machine the rest, Python rendering
the admin's templates, is most of a page's time.
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from bench.seed_runs import (  # noqa: E402 - needs the path above
    admin_client,
    insert_in_chunks,
    page,
    seed_options,
    setup_on_postgresql,
)
from bench.seed_runs import timed as timed_page  # noqa: E402

BIG_TASK = "app.tasks.job_00"
BIG_EXCEPTION = "builtins.ValueError"

SEED_SQL = """
INSERT INTO djcelery_ops_deadletter (
    task_id, task_name, args, kwargs, payload_truncated, call_content_type,
    call_content_encoding, call_body, call_body_base64, replay_blocker, options, queue,
    periodic_task_name, root_id, parent_id, exception_class, exception_message, traceback,
    retries, worker_hostname, reason, fingerprint, first_failed_at, last_failed_at,
    occurrences, status, updated_at)
SELECT
    md5('dl' || g)::uuid::text, v.task_name, '[1, 2]', '{"order": 7}', false,
    'application/json', 'utf-8', '[[1, 2], {"order": 7}]', false, '',
    '{"queue": "default"}', (ARRAY['default', 'mail', 'reports'])[1 + g %% 3], '',
    CASE WHEN g %% 10 = 0 THEN md5('dl' || (g - 1))::uuid::text ELSE '' END,
    CASE WHEN g %% 10 = 0 THEN md5('dl' || (g - 1))::uuid::text ELSE '' END,
    v.exception_class, 'seeded failure ' || (g %% 100),
    repeat('Traceback (most recent call last): File "app/tasks.py", line 7 ', 8),
    3, 'seed@worker-' || (g %% 8),
    (ARRAY['exception', 'retries_exhausted', 'worker_lost', 'hard_time_limit',
           'permanent_error'])[1 + g %% 5],
    md5(v.task_name || ':' || v.exception_class),
    t.failed, t.failed, 1 + g %% 3,
    CASE WHEN g %% 10 = 1 THEN 'replayed' WHEN g %% 20 = 3 THEN 'resolved'
         WHEN g %% 50 = 5 THEN 'discarded' ELSE 'pending' END,
    t.failed
FROM generate_series(%(start)s, %(stop)s) AS g,
LATERAL (SELECT now() - (%(rows)s - g) * %(step)s * interval '1 second' AS failed) AS t,
LATERAL (SELECT
    CASE WHEN g %% 2 = 0 THEN 'app.tasks.job_00'
         ELSE 'app.tasks.job_' || lpad((1 + g %% 19)::text, 2, '0') END AS task_name,
    CASE WHEN g %% 2 = 0 THEN 'builtins.ValueError'
         ELSE 'app.errors.Error' || (g %% 10) END AS exception_class) AS v
"""


def timed(label: str, action) -> None:
    timed_page(label, action, sql=True)


def seed_id(number: int) -> str:
    return str(uuid.UUID(hashlib.md5(f"dl{number}".encode()).hexdigest()))


def seed(rows: int, chunk: int) -> None:
    insert_in_chunks(SEED_SQL, "djcelery_ops_deadletter", rows, chunk)


def lineage_letter() -> int:
    """A seeded letter replayed once, whose replay failed again: both lineage directions."""
    from djcelery_ops.models import DeadLetter, Replay

    first = DeadLetter.objects.get(task_id=seed_id(11))
    replay = Replay.objects.filter(dead_letter=first).first() or Replay.objects.create(
        dead_letter=first, by="bench", reason="bench", run_id="bench", new_task_id=seed_id(-11)
    )
    again = DeadLetter.objects.filter(replay_of=replay).first()
    if again is None:
        again = DeadLetter.objects.get(task_id=seed_id(13))
        again.replay_of = replay
        again.save(update_fields=["replay_of"])
    return int(again.pk)


def measure(rows_seeded: int) -> None:
    from django.contrib.admin import helpers

    from djcelery_ops.models import DeadLetter

    client = admin_client()
    base = "/admin/djcelery_ops/deadletter/"

    def get(url: str):
        return page(client, url)

    def post(url: str, data: dict):
        return page(client, url, data)

    count = DeadLetter.objects.order_by().count()
    big = DeadLetter.objects.filter(task_name=BIG_TASK).values_list("fingerprint", flat=True)[0]
    letter = DeadLetter.objects.get(task_id=seed_id(rows_seeded // 2 + 1))
    lineage = lineage_letter()
    print(f"{count:,} dead letters\n")
    print("| page | median | max | SQL queries | of which in the database (median) |")
    print("| --- | --- | --- | --- | --- |")
    timed("changelist", get(base))
    timed("`?status__exact=pending`", get(base + "?status__exact=pending"))
    timed("`?task_name=app.tasks.job_07`", get(base + "?task_name=app.tasks.job_07"))
    timed("`?exception_class=app.errors.Error3`", get(base + "?exception_class=app.errors.Error3"))
    timed(
        "`?reason__exact=worker_lost&queue=mail`",
        get(base + "?reason__exact=worker_lost&queue=mail"),
    )
    timed(
        "status + task + exception + queue",
        get(
            base + "?status__exact=pending&task_name=app.tasks.job_07"
            "&exception_class=app.errors.Error7&queue=mail"
        ),
    )
    timed("`?status__exact=discarded`", get(base + "?status__exact=discarded"))
    timed("search by a task id", get(base + f"?q={seed_id(rows_seeded // 3)}"))
    timed("search by a root id", get(base + f"?q={seed_id(999)}"))
    timed("search by a task name", get(base + "?q=app.tasks.job_11"))
    timed("`?p=500`", get(base + "?p=500"))
    timed("groups view", get(base + "groups/"))
    timed("change page", get(base + f"{letter.pk}/change/"))
    timed("change page with lineage", get(base + f"{lineage}/change/"))
    timed("edit-and-replay page", get(base + f"{letter.pk}/replay/"))
    selected = {
        "action": "replay_selected",
        "select_across": "1",
        "index": "0",
        helpers.ACTION_CHECKBOX_NAME: [str(letter.pk)],
    }
    timed(
        "confirm replay of all ~500,000 of a group",
        post(base + f"?fingerprint={big}&status__exact=pending", selected),
    )
    timed("group replay confirmation", get(base + f"groups/replay/?fingerprint={big}"))


def drop() -> None:
    from djcelery_ops.models import DeadLetter, Replay

    Replay.objects.filter(run_id="bench").delete()
    rows = DeadLetter.objects.filter(worker_hostname__startswith="seed@")
    from djcelery_ops.db import delete_in_batches

    for deleted in delete_in_batches(rows, 100_000):
        print(f"deleted {deleted:,}")


def main() -> None:
    parser = seed_options(__doc__.splitlines()[0], 250_000)
    parser.add_argument("--drop", action="store_true", help="delete the seeded rows and stop")
    options = parser.parse_args()
    setup_on_postgresql("seed_dead_letters.py")
    from djcelery_ops.models import DeadLetter

    if options.drop:
        drop()
        return
    if not options.measure_only:
        drop()
        seed(options.rows, options.chunk)
    seeded = DeadLetter.objects.filter(worker_hostname__startswith="seed@").order_by().count()
    measure(seeded)


if __name__ == "__main__":
    main()
