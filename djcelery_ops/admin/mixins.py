"""What the app's ModelAdmins share: a generic base and the read-only behaviour.

``ModelAdmin`` is generic only in django-stubs (``ModelAdmin[DeadLetter]``); at run time
Django's class cannot be subscripted. ``ModelAdmin`` here is that generic class for the
type checker and, at run time, a subclass that accepts the subscript and ignores it, so
every admin of the app writes ``ModelAdmin[Model]`` and no module needs its own alias.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

_ModelT = TypeVar("_ModelT", bound=Model)

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin
else:

    class ModelAdmin(admin.ModelAdmin):
        """``admin.ModelAdmin`` that can be subscripted like its django-stubs twin."""

        def __class_getitem__(cls, _model: Any) -> type[ModelAdmin]:
            return cls


class ReadOnlyAdminMixin(ModelAdmin[_ModelT]):
    """Nobody adds, changes or deletes rows here, not even a superuser.

    The rows are written by the app's services (capture, recorder, claims, the beat
    lease); an edit in the admin would bypass them. The detail page shows every field of
    ``fieldsets`` read-only, including the computed ones (``pretty_args``...).
    """

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: _ModelT | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: _ModelT | None = None) -> bool:
        return False

    def get_readonly_fields(
        self, request: HttpRequest, obj: _ModelT | None = None
    ) -> list[str] | tuple[Any, ...]:
        if not self.fieldsets:
            return super().get_readonly_fields(request, obj)
        return [str(field) for _name, options in self.fieldsets for field in options["fields"]]
