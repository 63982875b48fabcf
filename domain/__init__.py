"""Pure logic of stocksync: no Celery, SQLAlchemy or requests may be imported here."""
