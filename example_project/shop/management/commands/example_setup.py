"""Prepare the example project for a person: an admin user, demo data, a periodic job."""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from example_project.shop.models import Payment, WebhookDelivery
from example_project.shop.tasks import charge_payment, import_catalog_row, send_webhook


class Command(BaseCommand):
    help = "Create an admin user with a fresh random password, demo payments and a nightly job."

    def handle(self, *args, **options):
        password = secrets.token_urlsafe(12)
        user, _ = get_user_model().objects.get_or_create(
            username="admin", defaults={"is_staff": True, "is_superuser": True}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        crontab, _ = CrontabSchedule.objects.get_or_create(minute="0", hour="2")
        PeriodicTask.objects.update_or_create(
            name="shop: nightly report",
            defaults={"task": "example_project.shop.tasks.nightly_report", "crontab": crontab},
        )
        if not Payment.objects.exists():
            for customer, amount in [("ada", 1200), ("grace", 4500), ("linus", 999)]:
                payment = Payment.objects.create(customer=customer, amount_cents=amount)
                charge_payment.delay(payment.pk)
            # Two tasks that fail for good, so the dead-letter admin has something to show:
            # a malformed row (at once) and a webhook to a closed port (after 3 retries).
            import_catalog_row.delay({"sku": "TEA-1", "price": "twelve"})
            delivery = WebhookDelivery.objects.create(
                url="http://127.0.0.1:9/hooks", event="payment.charged", payload={"id": 1}
            )
            send_webhook.delay(delivery.pk)
        self.stdout.write(f"Admin user: admin  password: {password}")
