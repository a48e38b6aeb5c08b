"""The dead-letter admin: list, filters, search, detail, all escaped and read-only."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from djcelery_ops.models import DeadLetter
from tests.factories import dead_letter

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:djcelery_ops_deadletter_changelist"


@pytest.fixture
def staff_client(client):
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    client.force_login(user)
    return client


def test_changelist__lists_and_filters_by_status_reason_task_queue(staff_client):
    dead_letter(task_name="shop.charge", queue="payments", exception_message="charge failed")
    dead_letter(
        task_name="mail.send", queue="mail", reason="worker_lost", exception_message="mail gone"
    )
    url = reverse(CHANGELIST)
    page = staff_client.get(url).content.decode()
    assert "charge failed" in page and "mail gone" in page

    for query, present, absent in [
        ("reason__exact=worker_lost", "mail gone", "charge failed"),
        ("task_name=shop.charge", "charge failed", "mail gone"),
        ("queue=mail", "mail gone", "charge failed"),
        ("status__exact=discarded", None, "charge failed"),
    ]:
        page = staff_client.get(f"{url}?{query}").content.decode()
        if present:
            assert present in page, query
        assert absent not in page, query


def test_changelist__search_matches_whole_ids_and_names_only(staff_client):
    dead_letter(task_id="abc-123", exception_message="needle in message", root_id="root-1")
    dead_letter(task_id="zzz-999", exception_message="other", task_name="mail.send")

    def found(term: str) -> set[str]:
        page = staff_client.get(reverse(CHANGELIST), {"q": term}).content.decode()
        return {text for text in ("needle in message", ">other<") if text in page}

    assert found("abc-123") == found(" root-1 ") == {"needle in message"}
    assert found("mail.send") == {">other<"}
    # Exact and case-sensitive, each an index lookup: no substring, no message text.
    assert found("abc") == found("ABC-123") == found("needle") == set()


def test_detail__pretty_prints_and_escapes_hostile_values(staff_client):
    letter = dead_letter(
        args=["<script>alert(1)</script>"],
        kwargs={"note": "<img src=x onerror=alert(2)>"},
        exception_message="<b>bold</b>",
        traceback='File "x.py", line 1, in <module>\n<script>evil()</script>',
    )
    url = reverse("admin:djcelery_ops_deadletter_change", args=[letter.pk])
    page = staff_client.get(url).content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page
    assert "<b>bold</b>" not in page
    assert "&lt;script&gt;evil()&lt;/script&gt;" in page
    assert '"note": ' in page.replace("&quot;", '"')


def test_admin__is_read_only_even_for_superusers(admin_client):
    letter = dead_letter()
    change = reverse("admin:djcelery_ops_deadletter_change", args=[letter.pk])
    response = admin_client.post(change, {"status": "resolved"})
    assert response.status_code == 403
    assert DeadLetter.objects.get(pk=letter.pk).status == DeadLetter.Status.PENDING
    assert admin_client.get(reverse("admin:djcelery_ops_deadletter_add")).status_code == 403
    delete = reverse("admin:djcelery_ops_deadletter_delete", args=[letter.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert DeadLetter.objects.filter(pk=letter.pk).exists()


def test_changelist__user_without_view_permission_is_refused(client):
    user = User.objects.create_user("nobody", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(reverse(CHANGELIST)).status_code == 403
