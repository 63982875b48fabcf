"""The Celery application (`celery -A worker …`) and its I/O edges: database, Market, limiter."""

from worker.app import app

__all__ = ["app"]
