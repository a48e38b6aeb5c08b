"""djcelery_ops: the operations layer for Django projects that run Celery."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0.dev0"

__all__ = ["OpsTask", "PermanentError", "TransientError", "ops_task"]


def __getattr__(name: str) -> Any:
    # Lazy, so that ``import djcelery_ops`` (settings, INSTALLED_APPS) stays cheap.
    if name in ("OpsTask", "ops_task"):
        from djcelery_ops.task import base

        return getattr(base, name)
    if name in ("PermanentError", "TransientError"):
        from djcelery_ops import exceptions

        return getattr(exceptions, name)
    raise AttributeError(f"module 'djcelery_ops' has no attribute {name!r}")
