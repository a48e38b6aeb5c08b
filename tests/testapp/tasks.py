"""Tasks the test suite sends to real worker processes."""

import os

from celery import shared_task

from .models import Effect


@shared_task(bind=True)
def record_effect(self, key: str) -> int:
    effect = Effect.objects.create(key=key, task_id=self.request.id, worker_pid=os.getpid())
    return effect.pk
