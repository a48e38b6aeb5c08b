"""Connection of the Celery signal receivers djcelery_ops relies on.

Called from ``AppConfig.ready()``; every receiver has a ``dispatch_uid`` so calling this
twice (tests, autoreload) connects each receiver once.
"""

from __future__ import annotations


def connect_signals() -> None:
    """Connect the receivers of every part; parts add theirs here as they land."""
