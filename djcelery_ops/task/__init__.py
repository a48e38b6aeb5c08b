"""The OpsTask base class, its Request class and the retry policy."""

from djcelery_ops.task.base import OpsTask, ops_task

__all__ = ["OpsTask", "ops_task"]
