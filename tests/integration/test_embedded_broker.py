"""worker/embedded_broker.py on a real PostgreSQL database: a claim lasts exactly as long as its
consumer's session, never by a timeout; settled messages leave kombu_message.

The dead consumer is a real process, SIGKILLed while it holds a message unacknowledged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.config import Config
from kombu import Connection, Exchange, Queue
from sqlalchemy import Engine, text

from tests import services
from tests.services import ROOT
from worker.database import make_engine
from worker.embedded_broker import Channel as EmbeddedChannel
from worker.embedded_broker import embedded_url

QUEUE = Queue("t.claims", Exchange("t.claims", type="direct"), routing_key="t.claims")

_HOLDER = """
import sys, time
from kombu import Connection, Exchange, Queue
import worker.embedded_broker

queue = Queue("t.claims", Exchange("t.claims", type="direct"), routing_key="t.claims")
with Connection(sys.argv[1]) as conn:
    message = queue(conn.default_channel).get(no_ack=False)
    print(message.payload, flush=True)
    time.sleep(600)  # holds it, unacknowledged, until killed
"""


@pytest.fixture
def broker(database_url: str) -> Iterator[str]:
    url = embedded_url("sqla+" + database_url)
    assert url.startswith("stocksync-sqla+postgresql")
    yield url


def _publish(url: str, *bodies: str) -> None:
    with Connection(url) as conn:
        producer = conn.Producer()
        for body in bodies:
            producer.publish(body, exchange=QUEUE.exchange, routing_key="t.claims", declare=[QUEUE])


def _rows(engine: Engine) -> list[tuple[str, bool]]:
    with engine.connect() as conn:
        return [
            (payload, visible)
            for payload, visible in conn.execute(
                text("SELECT payload, visible FROM kombu_message ORDER BY id")
            )
        ]


def _ids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.scalars(text("SELECT id FROM kombu_message ORDER BY id")))


def _hold_in_a_process(url: str) -> tuple[subprocess.Popen[str], str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    held = holder.stdout.readline().strip()
    assert held, "the holder got no message"
    return holder, held


def _embedded_channel(conn: Connection) -> EmbeddedChannel:
    channel = conn.default_channel
    assert isinstance(channel, EmbeddedChannel)
    return channel


def _recover_until(conn: Connection, at_least: int, timeout: float = 15.0) -> int:
    """PostgreSQL ends a killed client's session when it sees the socket close: poll for it."""
    restored = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        restored += _embedded_channel(conn).recover_orphans()
        if restored >= at_least:
            break
        time.sleep(0.2)
    return restored


@pytest.mark.slow
def test_a_message_held_by_a_live_consumer_is_not_delivered_again_until_it_dies(
    broker: str, engine: Engine
) -> None:
    _publish(broker, "held")
    holder, held = _hold_in_a_process(broker)
    try:
        with Connection(broker) as conn:
            # While the holder lives, however long, recovery leaves its message alone
            assert _embedded_channel(conn).recover_orphans() == 0
            assert QUEUE(conn.default_channel).get(no_ack=False) is None
            assert _rows(engine) == [(_rows(engine)[0][0], False)]

            # When it is SIGKILLed, the message comes back, once
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=30)
            assert _recover_until(conn, at_least=1) == 1
            again = QUEUE(conn.default_channel).get(no_ack=False)
            assert again is not None and again.payload == held == "held"
            assert again.delivery_info["redelivered"] is True  # Celery counts it as RabbitMQ's
            assert QUEUE(conn.default_channel).get(no_ack=False) is None

            # And its ack removes the row
            again.ack()
            assert _rows(engine) == []
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()


def test_ack_deletes_reject_deletes_and_requeue_returns_the_same_row(
    broker: str, engine: Engine
) -> None:
    _publish(broker, "acked", "rejected", "requeued")
    with Connection(broker) as conn:
        channel = conn.default_channel
        first, second, third = (QUEUE(channel).get(no_ack=False) for _ in range(3))
        assert [m.payload for m in (first, second, third) if m is not None] == [
            "acked",
            "rejected",
            "requeued",
        ]
        assert first is not None and second is not None and third is not None
        assert [visible for _, visible in _rows(engine)] == [False, False, False]
        assert not first.delivery_info.get("redelivered")

        first.ack()
        second.reject()
        third.requeue()
        assert [visible for _, visible in _rows(engine)] == [True]  # in place, not a copy

        again = QUEUE(channel).get(no_ack=False)
        assert again is not None and again.payload == "requeued"
        assert again.delivery_info["redelivered"] is True
    # A consumer that closes with a message unacknowledged puts it back, in place
    assert [visible for _, visible in _rows(engine)] == [True]


def test_a_graceful_close_puts_unacked_messages_back_and_another_consumer_gets_them(
    broker: str, engine: Engine
) -> None:
    _publish(broker, "one", "two")
    with Connection(broker) as conn:
        assert QUEUE(conn.default_channel).get(no_ack=False) is not None
    with Connection(broker) as conn:
        got = [QUEUE(conn.default_channel).get(no_ack=False) for _ in range(3)]
        assert sorted(m.payload for m in got if m is not None) == ["one", "two"]
        for message in got:
            if message is not None:
                message.ack()
    assert _rows(engine) == []


def test_only_postgresql_sqla_urls_are_served_by_the_embedded_transport() -> None:
    assert embedded_url("sqla+postgresql+psycopg://h/db") == (
        "stocksync-sqla+postgresql+psycopg://h/db"
    )
    assert embedded_url("sqlalchemy+postgresql://h/db") == "stocksync-sqla+postgresql://h/db"
    assert embedded_url("sqla+sqlite:///x.db") == "sqla+sqlite:///x.db"
    assert embedded_url("amqp://guest:guest@h:5672//") == "amqp://guest:guest@h:5672//"


def test_migration_0007_drops_only_the_rows_kombus_own_consumer_delivered() -> None:
    name = f"stocksync_t_{uuid.uuid4().hex[:12]}"
    services.admin_execute(f'CREATE DATABASE "{name}"')
    url = services.url_for_database(name)
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url)
    engine = make_engine(url)
    try:
        command.upgrade(config, "0005")
        # An older stocksync's consumer (kombu's own transport) took and acknowledged the first
        # message: the row stays, invisible. The embedded transport holds a claim on the second;
        # the third waits.
        _publish("sqla+" + url, "delivered")
        with Connection("sqla+" + url) as conn:
            delivered = QUEUE(conn.default_channel).get(no_ack=False)
            assert delivered is not None
            delivered.ack()
        _publish(embedded_url("sqla+" + url), "claimed", "pending")
        ids = _ids(engine)
        assert len(ids) == 3
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE kombu_message SET visible = false, version = -1 WHERE id = :id"),
                {"id": ids[1]},
            )

        command.upgrade(config, "0007")

        assert _ids(engine) == ids[1:]
    finally:
        engine.dispose()
        services.drop_database(name)
