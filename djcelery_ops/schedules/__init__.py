"""Schedules as code synced into django-celery-beat, and the leader-locked scheduler."""
