"""The OpsTask base class, its Request class and the retry policy."""
