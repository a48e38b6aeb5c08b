"""The life of database connections in long-running processes: a worker, beat.

Django closes connections at the end of each request (``close_old_connections``, with
``CONN_MAX_AGE``); a worker or beat has no requests, and Celery's Django fixup closes a
worker's connections after every task unless ``CELERY_DB_REUSE_MAX`` is set. These keep a
working connection and replace only one an error left unusable.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, connections


def close_broken_connections() -> None:
    """``close_old_connections`` for a long-running loop such as beat's, not a request.

    Django's default ``CONN_MAX_AGE = 0`` means one connection per request; applied to
    every beat tick it opened a new database connection each time (most of an idle
    tick's cost). A connection with ``CONN_MAX_AGE = 0`` is kept here while it works and
    replaced once an error left it unusable; a positive ``CONN_MAX_AGE`` is honoured.
    """
    for conn in connections.all(initialized_only=True):
        if conn.settings_dict.get("CONN_MAX_AGE") == 0:
            conn.close_at = None
        conn.close_if_unusable_or_obsolete()


def close_unusable_connection() -> None:
    """Close the default connection if an error left it unusable, else keep it.

    The error half of ``close_old_connections``, without its ``CONN_MAX_AGE`` half: for
    a write inside a worker's task, where the connection's life is Celery's to decide
    (``CELERY_DB_REUSE_MAX``), not the request cycle's.
    """
    _close_if_unusable(connection)


def close_unusable_connections(**_signal: Any) -> None:
    """``task_prerun`` receiver: every connection an error left unusable is replaced
    before the next task uses it.

    With ``CELERY_DB_REUSE_MAX`` a worker keeps its connections across tasks and Celery
    closes them only every so many tasks: a connection the server dropped would fail
    every task until then. A healthy connection costs nothing here (no query).
    """
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:  # an eager call inside the caller's transaction
            _close_if_unusable(conn)


def _close_if_unusable(conn: Any) -> None:
    if conn.connection is None:
        return
    if conn.get_autocommit() != conn.settings_dict["AUTOCOMMIT"]:
        conn.close()  # left outside autocommit by someone: start clean
    elif conn.errors_occurred:
        if conn.is_usable():
            conn.errors_occurred = False
        else:
            conn.close()
