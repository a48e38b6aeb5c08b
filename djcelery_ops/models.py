"""Models of djcelery_ops; each concept lives in its part's package and is re-exported here."""

from __future__ import annotations

from djcelery_ops.deadletter.models import DeadLetter, DeliveryCount, Discard, Replay

__all__ = ["DeadLetter", "DeliveryCount", "Discard", "Replay"]
