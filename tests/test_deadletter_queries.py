"""Every page of the dead-letter admin makes a fixed, small number of SQL queries.

Speed at a million rows is measured by ``bench/seed_dead_letters.py`` (README, "Dead
letters at scale"); what is asserted here is what keeps it: each page's query count
stays within its budget, and is the same with 3 rows as with 90 rows in several groups
(no query per row or per group). Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import datetime
import itertools
from io import StringIO

import pytest
from django.contrib.admin import helpers
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from djcelery_ops.admin import deadletter_actions
from djcelery_ops.admin.lists import CappedCountPaginator
from djcelery_ops.deadletter.services import IdCursor, discard, pending_groups
from djcelery_ops.models import DeadLetter, Discard, Replay

pytestmark = pytest.mark.django_db
BASE = "/admin/djcelery_ops/deadletter/"
_serial = itertools.count()

# Budgets: the goal of issue 14 is at most 10 queries on every page. The figures are what
# each page makes today (session and user included); a change that adds one fails here.
BUDGET = {
    "changelist": 7,
    "filters": 7,
    "search": 7,
    "deep page": 7,
    "groups": 4,
    "change": 5,
    "edit and replay": 3,
    "select all": 5,
    "group confirmation": 4,
}


def seed(groups: int, per_group: int) -> list[DeadLetter]:
    now = timezone.now()
    rows = []
    for group, n in itertools.product(range(groups), range(per_group)):
        serial = next(_serial)
        rows.append(
            DeadLetter(
                task_id=f"task-{serial}",
                task_name=f"app.job_{group}",
                exception_class=f"app.Error{group % 2}",
                exception_message=f"failure {serial}",
                queue=("default", "mail")[n % 2],
                root_id=f"root-{serial}" if n % 3 == 0 else "",
                reason=DeadLetter.Reason.EXCEPTION,
                fingerprint=f"fp-{group}",
                first_failed_at=now - datetime.timedelta(minutes=serial),
                last_failed_at=now - datetime.timedelta(minutes=serial),
                status=DeadLetter.Status.DISCARDED if n == 1 else DeadLetter.Status.PENDING,
                options={"queue": "default"},
            )
        )
    return DeadLetter.objects.bulk_create(rows)


def with_lineage(letters: list[DeadLetter]) -> DeadLetter:
    """A letter replayed once whose replay failed again: the change page shows both ways."""
    first, again = letters[0], letters[-1]
    replay = Replay.objects.create(
        dead_letter=first, by="alice", reason="retry", run_id="r1", new_task_id="new-1"
    )
    again.replay_of = replay
    again.save(update_fields=["replay_of"])
    return again


def queries(client, method: str, url: str, data: dict | None = None) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = getattr(client, method)(url, data or {})
    assert response.status_code == 200, (url, response.status_code)
    return len(captured)


def pages(letters: list[DeadLetter]) -> list[tuple[str, str, str, dict | None]]:
    letter, again = letters[0], with_lineage(letters)
    fingerprint = letter.fingerprint
    select_all = {
        "action": "replay_selected",
        "select_across": "1",
        "index": "0",
        helpers.ACTION_CHECKBOX_NAME: [str(letter.pk)],
    }
    return [
        ("changelist", "get", BASE, None),
        ("filters", "get", BASE + "?status__exact=pending", None),
        ("filters", "get", BASE + "?task_name=app.job_0", None),
        ("filters", "get", BASE + "?exception_class=app.Error0&queue=mail", None),
        ("filters", "get", BASE + "?reason__exact=exception&failed_within=24h", None),
        (
            "filters",
            "get",
            BASE + "?status__exact=pending&task_name=app.job_0&exception_class=app.Error0"
            "&queue=default&reason__exact=exception&failed_within=7d&replay=interrupted",
            None,
        ),
        ("search", "get", BASE + f"?q={letter.task_id}", None),
        ("search", "get", BASE + f"?q={letter.root_id}", None),
        ("search", "get", BASE + "?q=app.job_0", None),
        ("deep page", "get", BASE + "?p=2", None),
        ("groups", "get", BASE + "groups/", None),
        ("change", "get", BASE + f"{letter.pk}/change/", None),
        ("change", "get", BASE + f"{again.pk}/change/", None),
        ("edit and replay", "get", BASE + f"{letter.pk}/replay/", None),
        ("select all", "post", BASE + f"?fingerprint={fingerprint}", select_all),
        ("group confirmation", "get", BASE + f"groups/replay/?fingerprint={fingerprint}", None),
    ]


def measure(client, letters: list[DeadLetter]) -> dict[tuple[str, str], int]:
    return {
        (name, url.replace(str(letters[0].pk), "<pk>")): queries(client, method, url, data)
        for name, method, url, data in pages(letters)
    }


@pytest.fixture
def small_pages(monkeypatch):
    """Two rows a page, so that page 2 exists with a handful of rows."""
    from djcelery_ops.admin.deadletter import DeadLetterAdmin

    monkeypatch.setattr(DeadLetterAdmin, "list_per_page", 2)
    return DeadLetterAdmin


def test_every_admin_page__stays_within_its_budget_whatever_the_rows(admin_client, small_pages):
    ContentType.objects.get_for_model(DeadLetter)  # cached for the process, as in a server
    few = measure(admin_client, seed(groups=1, per_group=3))
    for (name, url), count in few.items():
        assert count <= BUDGET[name] <= 10, (name, url, count)
    DeadLetter.objects.all().delete()
    many = measure(admin_client, seed(groups=6, per_group=15))
    assert [(key[0], count) for key, count in many.items()] == [
        (key[0], count) for key, count in few.items()
    ]


def test_groups_view__counts_up_to_the_cap_then_says_more_than(admin_client, small_pages):
    letters = seed(groups=2, per_group=4)  # 3 pending in each group, 1 discarded
    DeadLetter.objects.filter(pk=letters[-1].pk).update(status=DeadLetter.Status.DISCARDED)
    small_pages.group_count_cap = 2
    page = admin_client.get(BASE + "groups/").content.decode()
    assert page.count('class="djops-group"') == 2
    assert page.count("more than 2") == 1 and "<td>2</td>" in page  # 3 and 2 pending
    small_pages.group_count_cap = 3
    page = admin_client.get(BASE + "groups/").content.decode()
    assert "more than" not in page and "<td>3</td>" in page and "<td>2</td>" in page


def test_pending_groups__latest_first_with_capped_counts():
    seed(groups=3, per_group=4)  # the group seeded last failed longest ago
    DeadLetter.objects.filter(fingerprint="fp-1").update(status=DeadLetter.Status.REPLAYED)
    groups = pending_groups(cap=2)
    assert [(g["fingerprint"], g["letters"], g["capped"]) for g in groups] == [
        ("fp-0", 2, True),
        ("fp-2", 2, True),
    ]
    latest = DeadLetter.objects.filter(fingerprint="fp-0", status="pending").first()
    assert groups[0]["last_seen"] == latest.last_failed_at
    assert (groups[0]["task_name"], groups[0]["exception_class"]) == ("app.job_0", "app.Error0")
    assert [g["letters"] for g in pending_groups(cap=10)] == [3, 3]
    assert not any(g["capped"] for g in pending_groups(cap=3))


def test_select_all__confirmation_counts_the_first_rows_then_discards_every_batch(
    admin_client, monkeypatch, settings
):
    seed(groups=2, per_group=7)  # 6 pending and 1 discarded in each group
    monkeypatch.setattr(deadletter_actions, "PLAN_CAP", 4)
    settings.DJCELERY_OPS_DEAD_LETTER_REPLAY_BATCH_SIZE = 2
    form = {"action": "discard_selected", "select_across": "1", "index": "0"}
    first = DeadLetter.objects.filter(fingerprint="fp-0").first()
    form[helpers.ACTION_CHECKBOX_NAME] = [str(first.pk)]
    page = admin_client.post(BASE + "?fingerprint=fp-0", form).content.decode()
    assert "More than 4 dead letters are selected" in page
    assert 'name="select_across" value="1"' in page and "djops-confirm" in page
    response = admin_client.post(
        BASE + "?fingerprint=fp-0", {**form, "post": "yes", "reason": "obsolete"}
    )
    assert response.status_code == 302
    group = DeadLetter.objects.filter(fingerprint="fp-0")
    assert set(group.values_list("status", flat=True)) == {"discarded"}
    assert Discard.objects.count() == 6
    assert DeadLetter.objects.filter(fingerprint="fp-1", status="pending").count() == 6
    from django.contrib.admin.models import LogEntry

    assert LogEntry.objects.count() == 6  # one per row, written batch by batch


def test_id_cursor__takes_keyset_batches_and_skips_rows_that_stopped_matching():
    rows = seed(groups=1, per_group=7)
    pending = DeadLetter.objects.filter(status="pending")
    cursor = IdCursor(pending)
    assert cursor.take(2) == [rows[0].pk, rows[2].pk]  # rows[1] is discarded
    DeadLetter.objects.filter(pk=rows[3].pk).update(status="replayed")
    assert cursor.take(2) == [rows[4].pk, rows[5].pk]
    assert cursor.take(5) == [rows[6].pk]
    assert cursor.take(5) == []
    with CaptureQueriesContext(connection) as captured:
        IdCursor(pending).take(3)
    assert "LIMIT 3" in captured[0]["sql"] and "ORDER BY" in captured[0]["sql"]


def test_discard__without_ids_reports_each_batch_through_progress():
    seed(groups=1, per_group=6)  # 5 pending
    seen = []
    outcome = discard(
        DeadLetter.objects.filter(fingerprint="fp-0"),
        by="bob",
        reason="old",
        batch_size=2,
        keep_ids=False,
        progress=lambda so_far, claimed: seen.append((so_far.done, len(claimed))),
    )
    assert seen == [(1, 1), (3, 2), (5, 2)]  # the discarded row is skipped in the first
    assert outcome.done == 5 and outcome.dead_letter_ids == []
    assert outcome.skipped == {"already discarded": 1}


def test_discard_command__prints_progress_when_it_takes_more_than_one_batch():
    seed(groups=1, per_group=6)
    output = StringIO()
    call_command(
        "discard_dead_letters", "--fingerprint=fp-0", "--reason=old", "--batch-size=2",
        stdout=output,
    )  # fmt: skip
    assert output.getvalue() == (
        "Discarded 2/5 (skipped 0)\n"
        "Discarded 4/5 (skipped 0)\n"
        "Discarded 5/5 (skipped 0)\n"
        "Discarded 5 dead letters.\n"
    )


@pytest.mark.skipif(connection.vendor != "postgresql", reason="statement_timeout is PostgreSQL's")
@pytest.mark.django_db(transaction=True)
def test_capped_count__gives_up_after_its_timeout_and_leaves_no_timeout_behind():
    seed(groups=1, per_group=3)
    slow = DeadLetter.objects.extra(where=["(SELECT true FROM pg_sleep(0.2))"])
    paginator = CappedCountPaginator(slow, 2)
    paginator.timeout_ms = 20
    assert (paginator.count, paginator.counted) == (paginator.cap + 1, False)
    quick = CappedCountPaginator(DeadLetter.objects.all(), 2)
    quick.timeout_ms = 5000
    assert (quick.count, quick.counted) == (3, True)
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0"


def test_changelist__counts_up_to_the_cap_and_a_deep_page_counts_up_to_itself(
    admin_client, small_pages, monkeypatch
):
    seed(groups=1, per_group=9)
    monkeypatch.setattr(small_pages, "count_cap", 2)
    assert "more than 2 dead letters" in admin_client.get(BASE).content.decode()
    response = admin_client.get(BASE + "?p=4")  # rows 7-8: beyond the cap of 2
    assert response.status_code == 200
    assert "more than 8 dead letters" in response.content.decode()
    assert admin_client.get(BASE + "?p=6").status_code == 302  # past the last row: ?e=1


def test_action_checkbox__is_the_html_django_renders_escaped_the_same():
    from django.contrib import admin
    from django.contrib.admin import ModelAdmin

    [letter] = seed(groups=1, per_group=1)
    letter.task_name = '<script>"x"</script>'
    model_admin = admin.site._registry[DeadLetter]
    ours = str(model_admin.action_checkbox(letter))
    assert ours == str(ModelAdmin.action_checkbox(model_admin, letter))
    assert "<script>" not in ours
