"""The replay admin in a real headless Chromium, served by pytest-django's live_server."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from djcelery_ops.models import DeadLetter, Replay
from tests.factories import dead_letter
from tests.replay_helpers import drain
from tests.utils import skip_without_browser, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = pytest.mark.django_db(transaction=True)
ARTIFACTS = Path(settings.BASE_DIR) / "var" / "tests" / "artifacts"


@pytest.fixture
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        skip_without_browser("Debian's chromium and chromium-driver are not installed")
    profile = tempfile.mkdtemp(prefix="djops-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1280,1000",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def log_in(browser, live_server, username: str) -> None:
    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys("pw")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_until(lambda: "/admin/login/" not in browser.current_url, what="the login")


def make_user(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for codename in ("view_deadletter", *codenames):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def test_browser__filter_replay_with_confirmation_and_edit_and_replay(
    browser, live_server, celery_queue
):
    make_user("operator", "replay_deadletter")
    charge = [dead_letter(task_name="shop.charge", options={"queue": celery_queue})
              for _ in range(2)]  # fmt: skip
    mail = dead_letter(task_name="mail.send", args=[1], kwargs={"to": "a@example.org"},
                       options={"queue": celery_queue})  # fmt: skip
    log_in(browser, live_server, "operator")

    # Filter to one task, select all shown rows, run the action, confirm with a reason.
    browser.get(f"{live_server.url}/admin/djcelery_ops/deadletter/?task_name=shop.charge")
    browser.find_element(By.ID, "action-toggle").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("replay_selected")
    browser.find_element(By.NAME, "index").click()
    summary = browser.find_element(By.ID, "djops-plan-summary").text
    assert summary == "Replay 2 dead letters:"
    browser.find_element(By.NAME, "reason").send_keys("gateway is back")
    browser.find_element(By.ID, "djops-confirm").click()
    assert "Replayed 2 dead letters." in browser.find_element(By.CSS_SELECTOR, ".messagelist").text
    wait_until(lambda: Replay.objects.count() == 2)
    assert {r.dead_letter_id for r in Replay.objects.all()} == {c.pk for c in charge}

    # Edit and replay: bad JSON is a form error and publishes nothing; good JSON replays.
    browser.get(f"{live_server.url}/admin/djcelery_ops/deadletter/{mail.pk}/change/")
    browser.find_element(By.ID, "edit-and-replay").click()
    kwargs = browser.find_element(By.NAME, "kwargs")
    kwargs.clear()
    kwargs.send_keys('{"to": ')
    browser.find_element(By.NAME, "reason").send_keys("fix the address")
    browser.find_element(By.ID, "djops-replay").click()
    assert "Invalid JSON" in browser.find_element(By.CSS_SELECTOR, ".errorlist").text
    assert DeadLetter.objects.get(pk=mail.pk).status == "pending"
    kwargs = browser.find_element(By.NAME, "kwargs")
    kwargs.clear()
    kwargs.send_keys('{"to": "b@example.org"}')
    browser.find_element(By.ID, "djops-replay").click()
    # find_element waits (implicitly) for the page the click loads; page_source would not.
    message = browser.find_element(By.CSS_SELECTOR, ".messagelist").text
    assert "Replayed with the edited arguments." in message
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "replay-admin-edit-and-replay.png"))
    row = Replay.objects.get(dead_letter=mail)
    assert row.edits == {"kwargs": {"old": {"to": "a@example.org"}, "new": {"to": "b@example.org"}}}
    messages = drain(celery_queue)
    assert sorted(m["headers"]["task"] for m in messages) == [
        "mail.send", "shop.charge", "shop.charge"
    ]  # fmt: skip


def test_browser__user_without_permission_sees_no_replay_action(browser, live_server):
    make_user("viewer")
    letter = dead_letter()
    log_in(browser, live_server, "viewer")
    browser.get(f"{live_server.url}/admin/djcelery_ops/deadletter/")
    assert "card 4242 declined" in browser.page_source
    assert browser.find_elements(By.NAME, "action") == []
    browser.get(f"{live_server.url}/admin/djcelery_ops/deadletter/{letter.pk}/change/")
    assert browser.find_elements(By.ID, "edit-and-replay") == []
