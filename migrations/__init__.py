"""Alembic migrations of stocksync's schema."""
