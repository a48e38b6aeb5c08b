"""Prepare the example project for a person: an admin user and demo data."""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from example_project.shop.models import Payment, WebhookDelivery
from example_project.shop.tasks import charge_payment, import_catalog_row, send_webhook


class Command(BaseCommand):
    help = "Create an admin user with a fresh random password and demo payments."

    def handle(self, *args, **options):
        password = secrets.token_urlsafe(12)
        user, _ = get_user_model().objects.get_or_create(
            username="admin", defaults={"is_staff": True, "is_superuser": True}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
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
