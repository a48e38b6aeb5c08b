from django.db import models


class Effect(models.Model):
    """One row per side effect a test task performed; tests count them."""

    key = models.CharField(max_length=200)
    task_id = models.CharField(max_length=255, blank=True)
    worker_pid = models.IntegerField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)
