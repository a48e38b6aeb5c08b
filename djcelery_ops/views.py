"""Views a project includes (``path("ops/", include("djcelery_ops.urls"))``): metrics,
health. Liveness (``health/live``) is open and says nothing but "ok"; readiness with its
details (``health/ready``, 200 or 503) and the metrics are

refused to anyone but a request bearing ``DJCELERY_OPS_METRICS_TOKEN``
(``Authorization: Bearer <token>``, for Prometheus) or a logged-in user with the
``djcelery_ops.view_metrics`` permission (superusers have it): counts of task names and
queues tell an outsider more than a project means to publish.
"""

from __future__ import annotations

import hmac

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from djcelery_ops import metrics
from djcelery_ops.conf import ops_settings
from djcelery_ops.health import read_status

PERMISSION = "djcelery_ops.view_metrics"


def has_bearer_token(request: HttpRequest) -> bool:
    token = ops_settings.METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    if not token or not given.startswith("Bearer "):
        return False
    return hmac.compare_digest(given.removeprefix("Bearer ").encode(), token.encode())


def may_read_operations(request: HttpRequest) -> bool:
    user = request.user
    return has_bearer_token(request) or (user.is_authenticated and user.has_perm(PERMISSION))


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not may_read_operations(request):
        return HttpResponse("Forbidden.\n", status=403, content_type="text/plain")
    if not metrics.available():
        return HttpResponse(
            "prometheus-client is not installed: pip install 'djcelery-ops[prometheus]'.\n",
            status=501,
            content_type="text/plain",
        )
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)


@never_cache
@require_GET
def liveness_view(request: HttpRequest) -> HttpResponse:
    """The web process answers: no database, no broker, no data."""
    return HttpResponse("ok\n", content_type="text/plain")


@never_cache
@require_GET
def readiness_view(request: HttpRequest) -> HttpResponse:
    if not may_read_operations(request):
        return HttpResponse("Forbidden.\n", status=403, content_type="text/plain")
    status = read_status()
    return JsonResponse(status.as_dict(), status=200 if status.problem is None else 503)
