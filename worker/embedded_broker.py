"""kombu's SQLAlchemy transport on PostgreSQL, made at-least-once: a fetched message comes back
when its consumer dies unacknowledged, and an acknowledged one is deleted.

kombu's own transport (kombu.transport.sqlalchemy) sets `visible = false` on the row it hands out
and never looks at it again: acknowledging does nothing to the row, and a consumer killed before
it acknowledged (SIGKILL, OOM) leaves its messages invisible for good; the table only grows. It has
no visibility timeout (a timeout would also have to outlast the longest task and the time a
prefetched message waits for a pool slot, or a live consumer's message is delivered twice).

Here a fetch takes a session-level PostgreSQL advisory lock on the row's id, on one connection the
consumer holds for its whole life, in the same transaction that marks the row invisible. The lock
is the consumer's claim: PostgreSQL drops it when that session ends, however the process died.
Every consumer, when it starts and every RECOVERY_INTERVAL_SECONDS after, makes visible again the
invisible rows whose lock nobody holds: those of dead consumers only, never one a live consumer
holds, however long its task runs. An ack deletes the row, a reject deletes it or (requeue) makes
it visible again, in place; the lock is released with it. Rows written by kombu's own consumers are
told apart by `version` (CLAIMED_VERSION here) and are never touched.

Producers keep using plain `sqla+<database URL>`: rows and tables are kombu's, unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from json import loads
from queue import Empty
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla
from kombu.utils.encoding import bytes_to_str
from kombu.utils.uuid import uuid
from sqlalchemy import Connection, Table, func, select, text, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

logger = logging.getLogger(__name__)

# The URL prefix that selects this transport: `stocksync-sqla+postgresql+psycopg://…`.
ALIAS = "stocksync-sqla"
# First key of the two-key advisory locks: claims never collide with another lock of the service
# (the migrator's is a one-key lock, a separate key space in PostgreSQL).
LOCK_CLASS = 0x53_59_4E  # "SYN"
# kombu's own consumers leave `version` at 1 or more; a row this transport hands out says -1.
# The advisory lock under which kombu's tables are created (message ids, the other keys of
# LOCK_CLASS, are positive).
TABLES_LOCK_KEY = -1
CLAIMED_VERSION = -1
CLAIM_SESSION_SETTINGS = (
    "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3"
)
# How often a live consumer looks for a dead one's messages (it also looks when it starts).
RECOVERY_INTERVAL_SECONDS = 10.0

TRANSPORT_ALIASES[ALIAS] = f"{__name__}:Transport"


def embedded_url(broker_url: str) -> str:
    """The same broker served by this transport, for a `sqla+postgresql…` URL; others unchanged."""
    for prefix in ("sqla+", "sqlalchemy+"):
        if broker_url.startswith(prefix) and broker_url[len(prefix) :].startswith("postgresql"):
            return f"{ALIAS}+{broker_url[len(prefix) :]}"
    return broker_url


def _lost_connection(exc: DBAPIError) -> bool:
    return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)


class _Claims:
    """The consumer's claim connection (its advisory locks) and the row of each delivery tag."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # acks may come from the pool's result thread
        # delivery tag -> (row id, session): a claim lives only as long as its session.
        self.rows: dict[str, tuple[int, int]] = {}
        self.session = 0
        self.last_recovery = float("-inf")
        self._connection: Connection | None = None
        self._pid = os.getpid()

    @property
    def inherited(self) -> bool:
        """True in a forked child (pool process, beat): the claims are its parent's."""
        return self._pid != os.getpid()

    def connection(self, channel: Channel) -> Connection:
        """The claim connection, opened on first use."""
        if self._connection is None or self._connection.invalidated:
            engine, _ = channel._open()
            connection = engine.connect()
            # The claims last as long as this session: when the worker's host vanishes without
            # closing the socket, PostgreSQL's keepalives end it (and free its messages) within
            # about a minute instead of the kernel's two hours. Ignored on a Unix socket.
            connection.execute(text(CLAIM_SESSION_SETTINGS))
            connection.commit()
            self._connection = connection
        return self._connection

    def forget(self) -> None:
        """After a connection error: its session, and so its locks, are gone with it."""
        connection, self._connection = self._connection, None
        self.session += 1
        if connection is not None and not self.inherited:
            with contextlib.suppress(DBAPIError):
                connection.invalidate()
                connection.close()

    def close(self) -> None:
        """Ends the session: PostgreSQL releases every lock still held."""
        connection, self._connection = self._connection, None
        if connection is not None and not self.inherited:
            with contextlib.suppress(DBAPIError):
                connection.close()


class Channel(kombu_sqla.Channel):
    """kombu's SQLAlchemy channel whose fetch is a claim held by the consumer's session."""

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        # Kept past close(): kombu detaches a closed channel from its transport, and a late ack
        # of a message it already put back must still find (and skip) it.
        self._claims: _Claims = connection.claims
        self._queue_ids: dict[str, int] = {}
        super().__init__(connection, **kwargs)

    def _open(self) -> Any:
        """kombu's engine and session factory; its tables are created under an advisory lock, so
        processes starting together (a worker and its embedded beat) do not race on CREATE."""
        hostname = self.connection.client.hostname
        if hostname not in self._engines:
            with kombu_sqla._MUTEX:
                if hostname not in self._engines:
                    engine = self._engine_from_config()
                    with engine.begin() as connection:
                        connection.execute(
                            text("SELECT pg_advisory_xact_lock(:lock_class, :key)"),
                            {"lock_class": LOCK_CLASS, "key": TABLES_LOCK_KEY},
                        )
                        kombu_sqla.metadata.create_all(connection)
                    self._engines[hostname] = engine, kombu_sqla.sessionmaker(bind=engine)
        return self._engines[hostname]

    @property
    def _table(self) -> Table:
        table: Table = self.message_cls.__table__
        return table

    def _queue_id(self, queue: str) -> int:
        if queue not in self._queue_ids:
            self._queue_ids[queue] = int(self._get_or_create(queue).id)
            # The ORM session's read must not stay open, idle in transaction.
            self.session.commit()
        return self._queue_ids[queue]

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        """The oldest visible message of `queue`, claimed (invisible, locked) until settled."""
        if time.monotonic() - self._claims.last_recovery >= RECOVERY_INTERVAL_SECONDS:
            self.recover_orphans()
        queue_id = self._queue_id(queue)
        table = self._table
        claims = self._claims
        with claims.lock:
            connection = claims.connection(self)
            locked: int | None = None
            try:
                with connection.begin():
                    row = connection.execute(
                        select(table.c.id, table.c.payload, table.c.timestamp)
                        .where(table.c.queue_id == queue_id, table.c.visible.is_(True))
                        .order_by(table.c.timestamp, table.c.id)
                        .limit(1)
                        .with_for_update(skip_locked=True)
                    ).first()
                    if row is None:
                        raise Empty()
                    # Taken before the commit that makes the row invisible: no recovery can see
                    # the row invisible and unlocked while this consumer lives.
                    if not connection.scalar(select(func.pg_try_advisory_lock(LOCK_CLASS, row.id))):
                        raise Empty()
                    locked = row.id
                    connection.execute(
                        update(table)
                        .where(table.c.id == row.id)
                        .values(
                            visible=False, version=CLAIMED_VERSION, timestamp=func.localtimestamp()
                        )
                    )
            except Empty:
                raise
            except DBAPIError as exc:
                if _lost_connection(exc):
                    claims.forget()
                elif locked is not None:
                    self._unlock(connection, locked)
                raise
            except BaseException:
                if locked is not None:
                    self._unlock(connection, locked)
                raise
        payload: dict[str, Any] = loads(bytes_to_str(row.payload))
        # Delivered before (a fetch stamps `timestamp`, kombu inserts none; kombu's own restore
        # marks its copy): Celery reads `redelivered` from delivery_info, as RabbitMQ sets it.
        if row.timestamp is not None or payload.get("redelivered"):
            payload["properties"].setdefault("delivery_info", {})["redelivered"] = True
        # A tag of its own per delivery: a message kombu once restored by copy shares its tag.
        tag = uuid()
        payload["properties"]["delivery_tag"] = tag
        claims.rows[tag] = (row.id, claims.session)
        return payload

    def _unlock(self, connection: Connection, row_id: int) -> None:
        try:
            connection.rollback()
            connection.execute(select(func.pg_advisory_unlock(LOCK_CLASS, row_id)))
            connection.commit()
        except DBAPIError:
            self._claims.forget()

    def _settle(self, tag: str, *, requeue: bool) -> bool:
        """Deletes the delivery's row, or makes it visible again; False if it is not ours."""
        claims = self._claims
        claim = claims.rows.pop(tag, None)
        if claim is None:
            return False
        if claims.inherited:
            # A forked child's copy of a claim: only the consumer that holds the lock settles it.
            return True
        row_id, session = claim
        table = self._table
        with claims.lock:
            lost = session != claims.session
            if lost and requeue:
                # The claim ended with its session; recovery returns the row (another consumer
                # may already hold it again).
                return True
            connection = claims.connection(self)
            try:
                with connection.begin():
                    if requeue:
                        connection.execute(
                            update(table).where(table.c.id == row_id).values(visible=True)
                        )
                    else:
                        # Even when the claim was lost: the message is done, whoever holds it now.
                        connection.execute(table.delete().where(table.c.id == row_id))
                    if not lost:
                        connection.execute(select(func.pg_advisory_unlock(LOCK_CLASS, row_id)))
            except DBAPIError as exc:
                # The session is gone, and the claim with it: recovery makes the row visible
                # again (at least once: a redelivery of a committed message is idempotent).
                if _lost_connection(exc):
                    claims.forget()
                raise
        return True

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        """Acknowledged: the row is deleted."""
        self._settle(delivery_tag, requeue=False)
        super().basic_ack(delivery_tag, multiple)

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """Refused: deleted; requeued: visible again, in place (through `_restore`)."""
        if not requeue:
            self._settle(delivery_tag, requeue=False)
        super().basic_reject(delivery_tag, requeue)

    def _restore(self, message: Any) -> None:
        """A claimed message goes back in place; kombu's default would insert a copy."""
        try:
            if self._settle(message.delivery_tag, requeue=True):
                return
        except DBAPIError:
            logger.warning("broker: a message returns to its queue when its claim is recovered")
            return
        super()._restore(message)

    def recover_orphans(self) -> int:
        """Makes visible again the claimed rows of consumers that no longer exist; their count."""
        self._claims.last_recovery = time.monotonic()
        engine, _ = self._open()
        table = self._table.name
        # Not on the claim connection: a session is granted its own locks, so there every
        # live claim would look orphaned.
        with engine.begin() as connection:
            restored = connection.execute(
                text(
                    f"""
                    WITH claimed AS MATERIALIZED (
                        SELECT id FROM {table}
                        WHERE visible = false AND version = :claimed
                        FOR UPDATE SKIP LOCKED
                    ), orphaned AS MATERIALIZED (
                        SELECT id FROM claimed WHERE pg_try_advisory_xact_lock(:lock_class, id)
                    )
                    UPDATE {table} AS m SET visible = true
                    FROM orphaned WHERE m.id = orphaned.id
                    RETURNING m.id
                    """  # noqa: S608 - the table name is kombu's constant; values are bound
                ),
                {"claimed": CLAIMED_VERSION, "lock_class": LOCK_CLASS},
            ).all()
        if restored:
            logger.warning(
                "broker: %d message(s) of a stopped consumer returned to their queues",
                len(restored),
            )
        return len(restored)


class Transport(kombu_sqla.Transport):
    """kombu's SQLAlchemy transport with `Channel` above; one claim connection per connection."""

    Channel = Channel

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.claims = _Claims()

    def close_connection(self, connection: Any) -> None:
        """Closing channels puts their unacked messages back; then the claim session ends."""
        try:
            super().close_connection(connection)
        finally:
            self.claims.close()
