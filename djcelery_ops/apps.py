from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class DjceleryOpsConfig(AppConfig):
    name = "djcelery_ops"
    verbose_name = _("Celery operations")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Importing registers the system checks; connecting is idempotent (dispatch_uid).
        from celery import signals
        from django.core import checks as django_checks

        from djcelery_ops import checks  # noqa: F401
        from djcelery_ops.connections import close_unusable_connections
        from djcelery_ops.crypto import check_encryption_keys
        from djcelery_ops.deadletter import receivers as deadletter_receivers
        from djcelery_ops.idempotency import receivers as idempotency_receivers
        from djcelery_ops.metrics import connect as connect_metrics
        from djcelery_ops.runs import receivers as runs_receivers
        from djcelery_ops.wire import stamp_queue_header

        django_checks.register(check_encryption_keys, django_checks.Tags.security)
        signals.before_task_publish.connect(stamp_queue_header, dispatch_uid="djops.queue_header")
        # A worker that keeps its connections (CELERY_DB_REUSE_MAX) replaces a broken one.
        signals.task_prerun.connect(close_unusable_connections, dispatch_uid="djops.db_broken")
        deadletter_receivers.connect()
        idempotency_receivers.connect()
        runs_receivers.connect()
        connect_metrics()  # only with the [prometheus] extra installed
