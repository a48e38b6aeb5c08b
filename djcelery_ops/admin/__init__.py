"""ModelAdmins of djcelery_ops; actions call service functions and hold no logic."""

from djcelery_ops.deadletter import admin as _deadletter_admin  # noqa: F401
from djcelery_ops.idempotency import admin as _idempotency_admin  # noqa: F401
from djcelery_ops.runs import admin as _runs_admin  # noqa: F401
from djcelery_ops.schedules import admin as _schedules_admin  # noqa: F401
