"""What ``pip install djcelery-ops`` brings: the brokers' needs through Celery's extras."""

from __future__ import annotations

import configparser
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def install_requires() -> dict[str, Requirement]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    requirements = [Requirement(line) for line in lines if line.strip() and "#" not in line]
    return {requirement.name.lower(): requirement for requirement in requirements}


def test_install_requires__celery_with_its_redis_extra():
    # kombu's Redis transport imports `packaging`, installed only by kombu[redis].
    assert "redis" in install_requires()["celery"].extras


def test_install_requires__no_bare_redis_beside_celerys_extra():
    # celery[redis] pins the redis-py versions kombu supports; a second pin could clash.
    assert "redis" not in install_requires()


def test_manifest__sdist_carries_docs_and_no_test_suite():
    manifest = (ROOT / "MANIFEST.in").read_text().splitlines()
    assert "prune tests" in manifest
    assert "graft docs" in manifest
