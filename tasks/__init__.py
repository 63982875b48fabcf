"""Celery tasks: `stocks.submit` (the producers' API) and the outbox drain."""
