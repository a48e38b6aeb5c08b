"""Execution-time idempotency: key claim and completion in the database."""
