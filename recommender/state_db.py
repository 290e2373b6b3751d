"""The online state's database connections: the backend chosen by URL, the pools, serialised writes
and the two hot reads.

Backends: SQLite in WAL mode (the embedded default, one file in ``MOVIEREC_STATE_DIR``; several
worker processes of one machine share it) and PostgreSQL (``postgresql://...``, for several
machines). Writers are serialised (SQLite's write lock, PostgreSQL's transaction-scoped advisory
lock), so sequence order is commit order and a reader that has seen sequence ``n`` has seen every
event up to ``n``. A write is acknowledged only after its transaction commits (SQLite
``synchronous=FULL``), so it survives a crash of the server.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "state.db"
_PG_LOCK = 7_316_001  # advisory lock key that serialises writers on PostgreSQL


def state_url(location: str | Path) -> str:
    """A database URL from a URL, a state folder or a database file."""
    text = str(location)
    if "://" in text:
        return text
    path = Path(text)
    if path.suffix != ".db":
        path = path / STATE_FILE
    return f"sqlite:///{path.resolve()}"


@dataclass(frozen=True)
class StateLimits:
    """How long the online state may keep a caller waiting, and how many connections it opens.

    Only PostgreSQL uses them (SQLite is a local file). Every bound is in seconds; 0 turns a
    server-side timeout off. Serving passes its settings (``MOVIEREC_STATE_*``); the defaults
    suit a training run that folds the state in (long reads, no hurry).
    """

    connect_timeout: float = 10.0  # opening a connection (libpq counts whole seconds, at least 2)
    statement_timeout: float = 0.0  # one statement, on the server (also bounds idle-in-transaction)
    lock_timeout: float = 30.0  # waiting for a lock, the writers' advisory lock included
    pool_size: int = 4  # transactions: connections kept open
    max_overflow: int = 2  # transactions: extra connections under load, closed when returned
    read_pool_size: int = 2  # the hot reads (sequence check, catch-up)
    pool_timeout: float = 10.0  # waiting for a free connection of either pool

    @property
    def max_connections(self) -> int:
        """The most connections one process ever holds to the state's server."""
        return self.pool_size + self.max_overflow + self.read_pool_size


def _pg_connect_args(limits: StateLimits) -> dict[str, Any]:
    """psycopg connection arguments: the timeouts, and keepalives both ways, so a vanished peer
    is noticed in about half a minute instead of the kernel's two hours (on the server side a
    vanished writer's session ends, releasing the writers' lock it held)."""
    def ms(seconds: float) -> int:
        return int(round(seconds * 1000))

    idle = 10
    options = [
        f"statement_timeout={ms(limits.statement_timeout)}",
        f"lock_timeout={ms(limits.lock_timeout)}",
        # a writer that stops mid-transaction (its process frozen) must not hold the lock for good
        f"idle_in_transaction_session_timeout={ms(max(limits.statement_timeout, limits.lock_timeout, 10.0))}",
        f"tcp_keepalives_idle={idle}", "tcp_keepalives_interval=5", "tcp_keepalives_count=3",
    ]
    return {
        "connect_timeout": max(2, math.ceil(limits.connect_timeout)),
        "options": " ".join(f"-c {o}" for o in options),
        "keepalives": 1, "keepalives_idle": idle, "keepalives_interval": 5, "keepalives_count": 3,
        "application_name": "movierec",
    }


class StateDB:
    """The connections of one state database: a bounded pool for transactions (writes serialised
    against every other writer), and the hot reads (:meth:`query`)."""

    def __init__(self, url: str, dialect: str, limits: StateLimits) -> None:
        import sqlalchemy as sa

        self.url = url
        self.dialect = dialect
        self.sa = sa
        self._hot: Any = None  # PostgreSQL: the pool of the hot reads (see query)
        self._local = threading.local()
        if dialect == "sqlite":
            path = Path(url.split(":///", 1)[1])
            _create_private(path)
            self.engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
            sa.event.listen(self.engine, "connect", _sqlite_connect)
            sa.event.listen(self.engine, "begin", _sqlite_begin)
        else:
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://"):]
            args = _pg_connect_args(limits)
            # one bounded pool for transactions (pre-pinged: a restarted server costs no failed
            # write) and one for the hot reads (no ping, no reset: a broken connection is dropped
            # when a read fails); together at most limits.max_connections per process
            self.engine = sa.create_engine(
                url, pool_pre_ping=True, pool_size=limits.pool_size, max_overflow=limits.max_overflow,
                pool_timeout=limits.pool_timeout, pool_recycle=1800, connect_args=args,
            )
            import psycopg

            dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
            self._hot = sa.pool.QueuePool(
                lambda: psycopg.connect(dsn, autocommit=True, **args), pool_size=limits.read_pool_size, max_overflow=0,
                timeout=limits.pool_timeout, recycle=1800, reset_on_return=None, pre_ping=False,
            )

    def write(self) -> Any:
        """A write transaction, serialised against every other writer of this database."""
        db = self

        class _Tx:
            def __enter__(self) -> Any:
                self.cm = db.engine.execution_options(movierec_write=True).begin()
                conn = self.cm.__enter__()
                if db.dialect == "postgresql":
                    conn.execute(db.sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
                return conn

            def __exit__(self, *exc: Any) -> Any:
                return self.cm.__exit__(*exc)

        return _Tx()

    def read(self) -> Any:
        return self.engine.connect()

    def _raw(self) -> Any:
        """This thread's own autocommit SQLite connection, for the two hot reads (the sequence
        check of every request and the bulk fetch of a catch-up): no pool checkout, no
        BEGIN/ROLLBACK around a single SELECT, no per-row result objects. A SQLite connection is
        a file handle, not a server's slot, so one per thread costs nothing that runs out."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            import sqlite3

            conn = sqlite3.connect(self.url.split(":///", 1)[1], timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self._hot is not None:
            # PostgreSQL: an autocommit connection from the bounded pool of hot reads, so the
            # number of connections stays fixed however many threads ask
            fairy = self._hot.connect()
            try:
                rows = fairy.driver_connection.execute(sql.replace("?", "%s"), params).fetchall()
            except Exception:
                fairy.invalidate()  # a broken connection is replaced on the next checkout
                raise
            finally:
                fairy.close()
            return rows
        try:
            cur = self._raw().execute(sql, params)
        except Exception:
            self._drop_raw()  # a broken connection is replaced on the next call
            raise
        return cur.fetchall()

    def _drop_raw(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


    def close(self) -> None:
        self._drop_raw()
        if self._hot is not None:
            self._hot.dispose()
        self.engine.dispose()


def _sqlite_connect(dbapi_conn: Any, record: Any) -> None:
    dbapi_conn.isolation_level = None  # transactions are begun explicitly (_sqlite_begin)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives power loss too
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # writers take the write lock at BEGIN: no deadlock upgrading a read lock, and sequence
    # numbers are handed out in commit order
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("movierec_write") else "BEGIN")


def _create_private(db: Path) -> None:
    """The state folder and database file, private to their owner from the start (they hold
    every user's ratings); SQLite creates the ``-wal`` and ``-shm`` files with the database
    file's mode. An existing file keeps its mode: an operator's choice stands."""
    db.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(db, os.O_RDWR | os.O_CREAT, 0o600))


def safe_url(url: str) -> str:
    """A URL without its password, for messages and logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url
