"""URLs of djcelery_ops' operations views: ``path("ops/", include("djcelery_ops.urls"))``."""

from __future__ import annotations

from django.urls import path

from djcelery_ops.views import metrics_view

app_name = "djcelery_ops"
urlpatterns = [path("metrics", metrics_view, name="metrics")]
