from django.contrib import admin

from .models import DailyReport, Payment, ProviderCharge, WebhookDelivery

admin.site.register(Payment, list_display=["id", "customer", "amount_cents", "status"])
admin.site.register(ProviderCharge, list_display=["idempotency_key", "amount_cents"])
admin.site.register(WebhookDelivery, list_display=["id", "event", "url", "attempts"])
admin.site.register(DailyReport, list_display=["day", "payments", "total_cents"])
