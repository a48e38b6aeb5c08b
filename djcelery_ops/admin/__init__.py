"""ModelAdmins of djcelery_ops; actions call service functions and hold no logic."""

from djcelery_ops.schedules import admin as _schedules_admin  # noqa: F401
