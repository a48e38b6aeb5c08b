"""The test project. Like a Django project's package, it loads its Celery app, so that
``manage.py`` commands (replay, run now) publish with it and not with Celery's default."""

from tests.celery_app import app as celery_app

__all__ = ["celery_app"]
