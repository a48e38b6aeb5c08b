"""Nobody does more in the admin than their permissions say (issue 13).

Every action and extra view the app registers or re-registers, for users with view-only,
replay-only, discard-only, run-now-only, change, and superuser rights: what the page
offers ("through the form") and what a forged POST achieves ("direct POST").
"""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from djcelery_ops.models import DeadLetter, Discard, IdempotencyKey, Replay, TaskRun
from djcelery_ops.schedules.leader import try_acquire
from djcelery_ops.schedules.models import SchedulerLease
from djcelery_ops.schedules.run_now import RUN_NOW_HEADER
from tests.factories import dead_letter
from tests.replay_helpers import drain

pytestmark = pytest.mark.django_db

VIEW = [
    "view_deadletter",
    "view_periodictask",
    "view_taskrun",
    "view_idempotencykey",
    "view_schedulerlease",
]
CHANGE = [
    "change_deadletter",
    "change_periodictask",
    "change_taskrun",
    "change_idempotencykey",
    "change_schedulerlease",
    "add_deadletter",
    "delete_deadletter",
    "delete_taskrun",
]
ROLES = {
    "view": VIEW,
    "replay": [*VIEW, "replay_deadletter"],
    "discard": [*VIEW, "discard_deadletter"],
    "run": [*VIEW, "run_periodictask_now"],
    "change": [*VIEW, *CHANGE],
    "superuser": None,
}
# Which roles may do what; everyone else is refused.
ALLOWED = {
    "replay": {"replay", "superuser"},
    "discard": {"discard", "superuser"},
    "run_now": {"run", "superuser"},
    "switch": {"change", "superuser"},
}
DL_CHANGELIST = reverse("admin:djcelery_ops_deadletter_changelist")
PT_CHANGELIST = reverse("admin:django_celery_beat_periodictask_changelist")
TASK = "tests.testapp.tasks.record_effect"


@pytest.fixture(params=list(ROLES))
def role(request, client) -> str:
    name = request.param
    codenames = ROLES[name]
    if codenames is None:
        user = User.objects.create_superuser("superuser", password="pw")
    else:
        user = User.objects.create_user(name, password="pw", is_staff=True)
        user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
        assert user.user_permissions.count() == len(codenames)
    client.force_login(user)
    return name


def offered_actions(client, url: str) -> set[str]:
    response = client.get(url)
    assert response.status_code == 200
    form = response.context["action_form"]  # None when no action is offered at all
    return {value for value, _label in form.fields["action"].choices if value} if form else set()


# --- dead letters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "verb"), [("replay_selected", "replay"), ("discard_selected", "discard")]
)
def test_dead_letter_action__offered_and_done_only_with_its_permission(
    client, role, action, verb, celery_queue
):
    letter = dead_letter(options={"queue": celery_queue})
    allowed = role in ALLOWED[verb]
    assert (action in offered_actions(client, DL_CHANGELIST)) is allowed

    forged = {"action": action, "_selected_action": [letter.pk], "post": "yes", "reason": "x"}
    client.post(DL_CHANGELIST, forged)
    status = DeadLetter.objects.get(pk=letter.pk).status
    expected = {"replay": "replayed", "discard": "discarded"}[verb] if allowed else "pending"
    assert status == expected
    audit = Replay if verb == "replay" else Discard
    assert audit.objects.exists() is allowed
    assert LogEntry.objects.filter(object_id=str(letter.pk)).exists() is allowed


def test_edit_and_replay__form_and_post_only_with_the_replay_permission(client, role):
    letter = dead_letter()
    url = reverse("admin:djcelery_ops_deadletter_edit_replay", args=[letter.pk])
    change = reverse("admin:djcelery_ops_deadletter_change", args=[letter.pk])
    allowed = role in ALLOWED["replay"]
    assert (url in client.get(change).content.decode()) is allowed
    assert client.get(url).status_code == (200 if allowed else 403)
    response = client.post(url, {"args": "[2]", "kwargs": "{}", "reason": "edited"})
    assert response.status_code == (302 if allowed else 403)
    assert Replay.objects.filter(dead_letter=letter).exists() is allowed


def test_groups__every_viewer_sees_them_and_only_the_permitted_buttons(client, role):
    dead_letter()
    page = client.get(reverse("admin:djcelery_ops_deadletter_groups")).content.decode()
    assert "djops-group" in page
    assert ("Replay group" in page) is (role in ALLOWED["replay"])
    assert ("Discard group" in page) is (role in ALLOWED["discard"])


@pytest.mark.parametrize("verb", ["replay", "discard"])
def test_group_confirmation__page_and_post_only_with_the_permission(client, role, verb):
    letter = dead_letter()
    url = reverse("admin:djcelery_ops_deadletter_group_action", args=[verb])
    query = f"?fingerprint={letter.fingerprint}"
    allowed = role in ALLOWED[verb]
    assert client.get(url + query).status_code == (200 if allowed else 403)
    response = client.post(url + query, {"post": "yes", "reason": "group"})
    assert response.status_code == (302 if allowed else 403)
    changed = DeadLetter.objects.get(pk=letter.pk).status != "pending"
    assert changed is allowed


# --- periodic tasks ---------------------------------------------------------------------


@pytest.fixture
def periodic(celery_queue) -> PeriodicTask:
    interval = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.DAYS)
    return PeriodicTask.objects.create(
        name="daily", task=TASK, interval=interval, kwargs='{"key": "k"}', queue=celery_queue
    )


def test_periodic_tasks__one_run_action_and_switches_only_with_their_permissions(
    client, role, periodic
):
    offered = offered_actions(client, PT_CHANGELIST)
    assert "run_tasks" not in offered  # django-celery-beat's own: no permission, no audit
    assert ("run_now" in offered) is (role in ALLOWED["run_now"])
    for action in ("enable_tasks", "disable_tasks", "toggle_tasks"):
        assert (action in offered) is (role in ALLOWED["switch"]), action
    assert ("delete_selected" in offered) is (role == "superuser")


def test_periodic_tasks__forged_run_posts_send_nothing_without_the_permission(
    client, role, periodic, celery_queue, django_capture_on_commit_callbacks
):
    allowed = role in ALLOWED["run_now"]
    for action in ("run_now", "run_tasks"):
        with django_capture_on_commit_callbacks(execute=True):
            client.post(PT_CHANGELIST, {"action": action, "_selected_action": [periodic.pk]})
    messages = drain(celery_queue)
    assert len(messages) == (1 if allowed else 0)  # run_tasks is refused to everyone
    if allowed:
        by = "superuser" if role == "superuser" else role
        assert messages[0]["headers"][RUN_NOW_HEADER] == by
        assert messages[0]["kwargs"] == {"key": "k"}
        entry = LogEntry.objects.get(object_id=str(periodic.pk))
        assert entry.change_message == "run now"
    else:
        assert not LogEntry.objects.exists()


@pytest.mark.parametrize(
    ("action", "enabled_before", "enabled_after"),
    [("enable_tasks", False, True), ("disable_tasks", True, False), ("toggle_tasks", True, False)],
)
def test_periodic_tasks__forged_switch_posts_need_the_change_permission(
    client, role, periodic, action, enabled_before, enabled_after
):
    PeriodicTask.objects.filter(pk=periodic.pk).update(enabled=enabled_before)
    client.post(PT_CHANGELIST, {"action": action, "_selected_action": [periodic.pk]})
    allowed = role in ALLOWED["switch"]
    enabled = PeriodicTask.objects.get(pk=periodic.pk).enabled
    assert enabled is (enabled_after if allowed else enabled_before)
    assert LogEntry.objects.filter(object_id=str(periodic.pk)).exists() is allowed


# --- job runs, keys, leases: read-only for everyone -------------------------------------


def test_job_runs_dashboard__every_viewer(client, role):
    assert client.get(reverse("admin:djcelery_ops_taskrun_dashboard")).status_code == 200


def _read_only_rows() -> list[tuple[str, int]]:
    run = TaskRun.objects.create(task_id="t-1", task_name="a.task", state="succeeded")
    key = IdempotencyKey.objects.create(
        key="k-1", task_name="a.task", mode="atomic", state="done", created_at=timezone.now()
    )
    try_acquire("default", "host:1:abc", 30)
    lease = SchedulerLease.objects.get()
    letter = dead_letter()
    return [
        ("djcelery_ops_taskrun", run.pk),
        ("djcelery_ops_idempotencykey", key.pk),
        ("djcelery_ops_schedulerlease", lease.pk),
        ("djcelery_ops_deadletter", letter.pk),
    ]


def test_read_only_models__viewed_by_all_changed_by_nobody(client, role):
    for prefix, pk in _read_only_rows():
        changelist = client.get(reverse(f"admin:{prefix}_changelist"))
        assert changelist.status_code == 200, prefix
        assert "delete_selected" not in offered_actions(
            client, reverse(f"admin:{prefix}_changelist")
        )
        change = reverse(f"admin:{prefix}_change", args=[pk])
        assert client.get(change).status_code == 200, prefix
        assert client.post(change, {"state": "failed", "holder": "x"}).status_code == 403, prefix
        assert client.get(reverse(f"admin:{prefix}_add")).status_code == 403, prefix
        delete = reverse(f"admin:{prefix}_delete", args=[pk])
        assert client.post(delete, {"post": "yes"}).status_code == 403, prefix
        forged = {"action": "delete_selected", "_selected_action": [pk], "post": "yes"}
        client.post(reverse(f"admin:{prefix}_changelist"), forged)
    assert TaskRun.objects.count() == IdempotencyKey.objects.count() == 1
    assert SchedulerLease.objects.get().holder == "host:1:abc"
    assert DeadLetter.objects.get().status == "pending"
