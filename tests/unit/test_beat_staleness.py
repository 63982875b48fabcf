"""Beat's tasks go stale by the broker's clock, never by the sending host's (issue 10, item 3)."""

from __future__ import annotations

from worker.app import celery_config
from worker.settings import Settings


def test_on_rabbitmq_every_beat_task_carries_a_ttl_and_no_sender_clock_instant() -> None:
    config = celery_config(
        Settings(broker_url="amqp://guest:guest@10.0.0.1:5672//", drain_interval_seconds=2)
    )
    options = {name: entry["options"] for name, entry in config["beat_schedule"].items()}
    assert options["drain-outbox"] == {"expiration": 4.0}
    assert all("expires" not in o and o["expiration"] > 0 for o in options.values()), options


def test_on_the_embedded_broker_which_has_no_ttl_expires_stays() -> None:
    config = celery_config(
        Settings(database_url="postgresql+psycopg://u@db/x", drain_interval_seconds=2)
    )
    assert config["beat_schedule"]["drain-outbox"]["options"] == {"expires": 4.0}
