"""The job-run admin: changelist, filters, search, lineage, and the dashboard."""

from __future__ import annotations

import datetime
import random
import shutil
import struct
import subprocess
from pathlib import Path

import django
import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from djcelery_ops.admin import charts
from djcelery_ops.admin.dashboard import dashboard_data
from djcelery_ops.admin.lists import CappedCountPaginator
from djcelery_ops.models import TaskRun
from tests.factories import dead_letter
from tests.utils import skip_without_browser

pytestmark = pytest.mark.django_db
State = TaskRun.State
CHANGELIST = "admin:djcelery_ops_taskrun_changelist"
DASHBOARD = "admin:djcelery_ops_taskrun_dashboard"
ARTIFACTS = Path(django_settings.BASE_DIR) / "var" / "tests" / "artifacts"


@pytest.fixture
def staff_client(client):
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_taskrun"))
    user.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    client.force_login(user)
    return client


def make_run(task_id: str, state: str = State.SUCCEEDED, **fields) -> TaskRun:
    now = timezone.now()
    values = {"task_name": "shop.charge", "received_at": now, "started_at": now}
    return TaskRun.objects.create(task_id=task_id, state=state, **{**values, **fields})


def page(client, url: str, **params) -> str:
    response = client.get(url, params)
    assert response.status_code == 200
    return response.content.decode()


def test_changelist__lists_runs_and_links_the_dashboard(staff_client):
    make_run("run-1", exception_class="builtins.ValueError", state=State.FAILED)
    html = page(staff_client, reverse(CHANGELIST))
    assert "shop.charge" in html and "builtins.ValueError" in html
    assert reverse(DASHBOARD) in html
    assert "1 task run" in html


@pytest.mark.parametrize(
    ("query", "present"),
    [
        ({"state__exact": "failed"}, "mail.send"),
        ({"task_name": "shop.charge"}, "shop.charge"),
        ({"queue": "mail"}, "mail.send"),
        ({"tenant": "acme"}, "shop.charge"),
        ({"received_within": "1h"}, "shop.charge"),
        ({"q": "run-mail"}, "mail.send"),
    ],
)
def test_changelist__filters_and_search(staff_client, query, present):
    make_run("run-charge", queue="payments", tenant="acme")
    long_ago = timezone.now() - datetime.timedelta(days=2)
    make_run("run-mail", State.FAILED, task_name="mail.send", queue="mail", received_at=long_ago)
    response = staff_client.get(reverse(CHANGELIST), query)
    assert response.status_code == 200
    assert [run.task_name for run in response.context["cl"].result_list] == [present]


def test_changelist__filter_choices_come_from_the_recorded_values(staff_client):
    make_run("a", queue="payments", tenant="acme")
    make_run("b", task_name="mail.send", queue="mail")
    html = page(staff_client, reverse(CHANGELIST))
    for choice in ("?task_name=mail.send", "?queue=payments", "?tenant=acme"):
        assert choice in html


def test_changelist__count_stops_at_a_cap_and_the_query_count_stays_small(staff_client):
    TaskRun.objects.bulk_create(
        TaskRun(task_id=f"t{i}", task_name="bulk.task", state=State.SUCCEEDED)
        for i in range(10_001)
    )
    with CaptureQueriesContext(connection) as queries:
        html = page(staff_client, reverse(CHANGELIST))
    assert "more than 10,000 task runs" in html
    run_queries = [q["sql"] for q in queries if "djcelery_ops_taskrun" in q["sql"]]
    # count (capped), the page, and the three index walks of the filters
    assert len(run_queries) == 5, run_queries
    assert not any("DISTINCT" in sql.upper() and "LIMIT" not in sql.upper() for sql in run_queries)


def test_detail__shows_parent_children_root_and_dead_letter(staff_client):
    root = make_run("root-1", task_name="flow.start")
    parent = make_run("parent-1", task_name="flow.parent", parent_id="root-1", root_id="root-1")
    make_run("child-1", task_name="flow.child", parent_id="parent-1", root_id="root-1")
    make_run("child-2", State.DEAD_LETTERED, task_name="flow.kid", parent_id="parent-1")
    letter = dead_letter(task_id="parent-1", task_name="flow.parent")
    html = page(staff_client, reverse("admin:djcelery_ops_taskrun_change", args=[parent.pk]))
    assert reverse("admin:djcelery_ops_taskrun_change", args=[root.pk]) in html
    assert "flow.child" in html and "flow.kid" in html
    assert reverse("admin:djcelery_ops_deadletter_change", args=[letter.pk]) in html


def test_detail__names_a_parent_that_was_not_recorded(staff_client):
    run = make_run("orphan", parent_id="gone-123")
    html = page(staff_client, reverse("admin:djcelery_ops_taskrun_change", args=[run.pk]))
    assert "gone-123 (not recorded)" in html


def test_dashboard__needs_view_permission(client):
    user = User.objects.create_user("nobody", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(reverse(DASHBOARD)).status_code == 403


def test_dashboard__empty_window_says_so(staff_client):
    html = page(staff_client, reverse(DASHBOARD), window="1h")
    assert "No runs in this window." in html


def test_charts__escape_task_names():
    svg = charts.bar_chart([("<script>alert(1)</script>", 3)], "Top failing")
    assert "<script>" not in svg and "&lt;script&gt;" in svg


def seed_dashboard_runs() -> None:
    rng = random.Random(7)
    now = timezone.now()
    names = ["shop.charge", "shop.refund", "mail.send_receipt", "reports.nightly", "sync.crm"]
    runs = []
    for i in range(1500):
        name = names[min(int(rng.expovariate(0.9)), len(names) - 1)]
        received = now - datetime.timedelta(minutes=rng.uniform(0, 24 * 60))
        failed = rng.random() < {"sync.crm": 0.3, "shop.charge": 0.05}.get(name, 0.01)
        runtime = rng.lognormvariate(-1 if name != "reports.nightly" else 1.5, 0.6)
        runs.append(
            TaskRun(
                task_id=f"dash-{i}",
                task_name=name,
                state=State.DEAD_LETTERED if failed else State.SUCCEEDED,
                received_at=received,
                started_at=received,
                finished_at=received + datetime.timedelta(seconds=runtime),
                runtime=runtime,
            )
        )
    TaskRun.objects.bulk_create(runs)
    make_run("stuck-1", State.STARTED, started_at=now - datetime.timedelta(hours=3))
    for i in range(4):
        dead_letter(task_name="sync.crm", reason="retries_exhausted", task_id=f"dl-{i}")
    dead_letter(task_name="shop.charge", reason="worker_lost")


def test_dashboard__shows_totals_and_four_charts(staff_client):
    seed_dashboard_runs()
    html = page(staff_client, reverse(DASHBOARD))
    assert html.count('role="img"') == 4  # the admin has icon SVGs of its own
    assert "Runs per hour" in html and "Runtime per task" in html
    assert "Top failing tasks" in html and "Pending dead letters by reason (5)" in html
    expected = TaskRun.objects.since(datetime.timedelta(hours=24)).count()
    assert f"<strong>{expected}</strong>" in html
    assert "sync.crm" in html


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_dashboard__renders_in_headless_chromium(staff_client, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        skip_without_browser("chromium is not installed (Debian package `chromium`)")
    seed_dashboard_runs()
    html = page(staff_client, reverse(DASHBOARD))
    # The admin's own CSS from Django's package: the page loads nothing over the network.
    admin_static = Path(django.__file__).parent / "contrib" / "admin" / "static" / "admin"
    static_url = "/" + django_settings.STATIC_URL.lstrip("/")
    html = html.replace(f"{static_url}admin/", admin_static.as_uri() + "/")
    assert admin_static.as_uri() in html
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    html_path = ARTIFACTS / "runs-dashboard.html"
    png_path = ARTIFACTS / "runs-dashboard.png"
    html_path.write_text(html)
    png_path.unlink(missing_ok=True)
    subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={png_path}", "--window-size=1400,1000", html_path.as_uri(),
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert png_size(png_path) == (1400, 1000)
    assert png_path.stat().st_size > 30_000  # a blank page is a few kilobytes


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "Asia/Kathmandu", "UTC"])
def test_dashboard__hourly_buckets_count_every_run_in_a_half_hour_time_zone(settings, zone):
    settings.TIME_ZONE = zone
    now = timezone.now()
    for minutes in (5, 40, 95, 150, 300):
        make_run(f"tz-{minutes}", received_at=now - datetime.timedelta(minutes=minutes))
    make_run("tz-failed", State.FAILED, received_at=now - datetime.timedelta(minutes=61))
    buckets = dashboard_data(24, now=now)["throughput"]
    assert sum(bucket.total for bucket in buckets) == 6
    assert sum(bucket.failed for bucket in buckets) == 1
    # The buckets start on the zone's hours and are labelled in its local time.
    assert {(bucket.start.minute, bucket.start.utcoffset()) for bucket in buckets} == {
        (0, timezone.localtime(now).utcoffset())
    }


def test_changelist__the_count_cap_is_the_paginators(staff_client, monkeypatch):
    monkeypatch.setattr(CappedCountPaginator, "cap", 3)
    TaskRun.objects.bulk_create(
        TaskRun(task_id=f"c{i}", task_name="bulk.task", state=State.SUCCEEDED) for i in range(4)
    )
    assert "more than 3 task runs" in page(staff_client, reverse(CHANGELIST))
