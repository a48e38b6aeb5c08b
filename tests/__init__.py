"""The test project; like a Django project's package, it loads its Celery app (README,
installation step 2), so `manage.py` run with tests.settings publishes to the test broker."""

from tests.celery_app import app as celery_app

__all__ = ["celery_app"]
