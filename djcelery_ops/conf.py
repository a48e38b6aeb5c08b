"""Settings of djcelery_ops.

Every name is read from ``django.conf.settings`` with the ``DJCELERY_OPS_`` prefix on each
access, so ``override_settings`` and pytest-django's ``settings`` fixture work, and nothing is
read at import time. The class attributes are the documented defaults.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

PREFIX = "DJCELERY_OPS_"


class OpsSettings:
    """Typed defaults; attribute access returns the project's value when it sets one."""

    def __getattribute__(self, name: str) -> Any:
        default = object.__getattribute__(self, name)
        if not name.isupper():
            return default
        return getattr(django_settings, PREFIX + name, default)

    def names(self) -> list[str]:
        return sorted(name for name in type(self).__annotations__ if name.isupper())


ops_settings = OpsSettings()
