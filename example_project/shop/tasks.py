"""Example tasks, shaped like the ones real projects run."""

import datetime
import decimal
import json
import urllib.error
import urllib.request

from django.db import transaction
from django.db.models import Count, Sum
from django.utils import timezone

from djcelery_ops import PermanentError, ops_task, per_schedule_slot

from .models import DailyReport, Payment, ProviderCharge, WebhookDelivery


@ops_task(retry_for=(urllib.error.URLError, ConnectionError, TimeoutError), max_retries=3)
def send_webhook(delivery_id: int) -> int:
    """POST an event to a customer's endpoint; network errors are worth a retry.

    After the last retry the delivery becomes a dead letter (reason: retries exhausted).
    """
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    delivery.attempts += 1
    request = urllib.request.Request(
        delivery.url,
        data=json.dumps({"event": delivery.event, "data": delivery.payload}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    delivery.save(update_fields=["attempts"])
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            delivery.last_status = response.status
    except urllib.error.HTTPError as error:
        if 400 <= error.code < 500:
            raise PermanentError(f"endpoint refused the event: HTTP {error.code}") from error
        raise
    delivery.delivered_at = timezone.now()
    delivery.save(update_fields=["attempts", "last_status", "delivered_at"])
    return delivery.last_status


def provider_charge(idempotency_key: str, amount_cents: int) -> str:
    """A payment provider call: the same key never charges twice (as Stripe's API does)."""
    charge, _ = ProviderCharge.objects.get_or_create(
        idempotency_key=idempotency_key, defaults={"amount_cents": amount_cents}
    )
    return f"ch_{charge.pk}"


@ops_task
def charge_payment(payment_id: int) -> str:
    """Charge a payment, passing a key derived from the payment to the provider."""
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment_id)
        if payment.status == Payment.Status.CHARGED:
            return payment.provider_charge_id
        charge_id = provider_charge(f"payment-{payment.pk}", payment.amount_cents)
        payment.status = Payment.Status.CHARGED
        payment.provider_charge_id = charge_id
        payment.save(update_fields=["status", "provider_charge_id"])
    return charge_id


@ops_task(idempotency_key=per_schedule_slot)
def nightly_report(day: str | None = None) -> dict[str, int]:
    """Aggregate yesterday's charged payments into a DailyReport, once per schedule slot."""
    report_day = (
        datetime.date.fromisoformat(day) if day else timezone.localdate() - datetime.timedelta(1)
    )
    totals = Payment.objects.filter(
        status=Payment.Status.CHARGED, created_at__date=report_day
    ).aggregate(count=Count("id"), total=Sum("amount_cents"))
    DailyReport.objects.update_or_create(
        day=report_day,
        defaults={"payments": totals["count"], "total_cents": totals["total"] or 0},
    )
    return {"payments": totals["count"], "total_cents": totals["total"] or 0}


@ops_task
def import_catalog_row(row: dict[str, str]) -> str:
    """Import one row of a supplier's price list; a malformed row can never succeed."""
    try:
        price = decimal.Decimal(row["price"])
    except (KeyError, decimal.InvalidOperation) as error:
        raise PermanentError(f"row {row.get('sku', '?')}: price is not a number") from error
    return f"{row['sku']}: {price}"
