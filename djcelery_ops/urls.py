"""URLs of djcelery_ops' operations views: ``path("ops/", include("djcelery_ops.urls"))``."""

from __future__ import annotations

from django.urls import path

from djcelery_ops.views import liveness_view, metrics_view, readiness_view

app_name = "djcelery_ops"
urlpatterns = [
    path("metrics", metrics_view, name="metrics"),
    path("health/live", liveness_view, name="health_live"),
    path("health/ready", readiness_view, name="health_ready"),
]
