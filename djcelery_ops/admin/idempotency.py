"""Read-only admin of idempotency keys: filter by state and task, search by key."""

from __future__ import annotations

from django.contrib import admin

from djcelery_ops.admin.mixins import ReadOnlyAdminMixin
from djcelery_ops.idempotency.models import IdempotencyKey


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(ReadOnlyAdminMixin[IdempotencyKey]):
    list_display = [
        "key",
        "task_name",
        "state",
        "mode",
        "token",
        "attempts",
        "owner_task_id",
        "lease_expires_at",
        "created_at",
        "completed_at",
    ]
    list_filter = ["state", "mode", "task_name"]
    search_fields = ["key", "owner_task_id"]
    date_hierarchy = "created_at"
    list_per_page = 50
    show_full_result_count = False
