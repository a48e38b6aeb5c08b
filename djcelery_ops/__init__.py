"""djcelery_ops: the operations layer for Django projects that run Celery."""

from __future__ import annotations

__version__ = "0.1.0.dev0"
