"""Smoke tests: the whole service with its own PostgreSQL, RabbitMQ node, sandbox and worker
processes, under faults (the chaos run)."""
