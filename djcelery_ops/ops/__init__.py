"""System checks, health, metrics and structured logs."""
