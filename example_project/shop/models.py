"""A small shop: what real projects hand to Celery (payments, webhooks, reports)."""

from django.db import models


class Payment(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        CHARGED = "charged"
        FAILED = "failed"

    customer = models.CharField(max_length=100)
    amount_cents = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    provider_charge_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Payment #{self.pk} {self.amount_cents}c for {self.customer}"


class ProviderCharge(models.Model):
    """Stands in for a payment provider that honours Idempotency-Key headers."""

    idempotency_key = models.CharField(max_length=200, unique=True)
    amount_cents = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)


class WebhookDelivery(models.Model):
    url = models.URLField()
    event = models.CharField(max_length=100)
    payload = models.JSONField(default=dict)
    delivered_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_status = models.PositiveIntegerField(null=True, blank=True)


class DailyReport(models.Model):
    day = models.DateField(unique=True)
    payments = models.PositiveIntegerField()
    total_cents = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
