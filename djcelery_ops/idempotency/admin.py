"""Read-only admin of idempotency keys: filter by state and task, search by key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin
from django.http import HttpRequest

from djcelery_ops.idempotency.models import IdempotencyKey

if TYPE_CHECKING:
    _KeyAdminBase = admin.ModelAdmin[IdempotencyKey]
else:  # ModelAdmin is generic only in django-stubs
    _KeyAdminBase = admin.ModelAdmin


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(_KeyAdminBase):
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

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: IdempotencyKey | None = None
    ) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: IdempotencyKey | None = None
    ) -> bool:
        return False
