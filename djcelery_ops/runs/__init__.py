"""Job-run records, their batched writer and the query API."""
