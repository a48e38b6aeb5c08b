from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class DjceleryOpsConfig(AppConfig):
    name = "djcelery_ops"
    verbose_name = _("Celery operations")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Importing registers the system checks; connecting is idempotent (dispatch_uid).
        from djcelery_ops import checks  # noqa: F401
        from djcelery_ops.signals import connect_signals

        connect_signals()
