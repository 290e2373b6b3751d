"""The tables of the online state (created with the store, see :class:`recommender.state.StateStore`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StateTables:
    """The online state's tables, on one SQLAlchemy ``MetaData``."""

    metadata: Any
    events: Any
    items: Any
    meta: Any
    workers: Any
    idempotency: Any
    snapshots: Any


def state_tables() -> StateTables:
    """Define the tables (SQLAlchemy is imported here, on first use of a state)."""
    import sqlalchemy as sa

    md = sa.MetaData()
    seq_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    events = sa.Table(
        "movierec_events", md,
        sa.Column("seq", seq_type, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("item_id", sa.Text, nullable=False),
        sa.Column("rating", sa.Float),
        sa.Column("title", sa.Text),
        sa.Column("payload", sa.Text),
        sqlite_autoincrement=True,  # never reuse a sequence number, even after the last row is gone
    )
    items = sa.Table(
        "movierec_items", md,
        sa.Column("item_id", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        # the movie's vectors as the model that added it computed them (little-endian float32,
        # base64): content vector and two-tower item vector, with that model's version
        sa.Column("model_version", sa.Text),
        sa.Column("content_vector", sa.Text),
        sa.Column("item_vector", sa.Text),
    )
    meta = sa.Table(
        "movierec_meta", md,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    # what each worker process serves, written by its watcher (serving/watcher.py): pruning
    # keeps every bundle a live worker serves, and an admin action waits for them to follow
    workers = sa.Table(
        "movierec_workers", md,
        sa.Column("worker", sa.String(200), primary_key=True),  # host:pid:token
        sa.Column("bundle", sa.Text),  # folder name of the served bundle
        sa.Column("path", sa.Text),
        sa.Column("version", sa.Text),
        sa.Column("generation", sa.BigInteger, nullable=False),  # of the choice it follows
        sa.Column("seen", sa.Float, nullable=False),  # unix time of its last heartbeat
    )
    idempotency = sa.Table(
        "movierec_idempotency", md,
        sa.Column("scope", sa.Text, primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("draft", sa.Text, nullable=False),
        sa.Column("body", sa.Text),
        sa.Column("at", sa.Float, nullable=False, index=True),  # the purge of old keys is a range delete
    )
    # derived data (recommender/snapshots.py): one bundle's served overlay after the events up
    # to ``seq``, so a worker loading that bundle replays only the events after it; a row is
    # written in one transaction, so a crash leaves the previous snapshots and never half a one
    snapshots = sa.Table(
        "movierec_snapshots", md,
        sa.Column("id", seq_type, primary_key=True, autoincrement=True),
        sa.Column("bundle", sa.Text, nullable=False),  # the bundle's fingerprint (snapshots.bundle_key)
        sa.Column("state_id", sa.Text, nullable=False),
        sa.Column("base_seq", sa.BigInteger, nullable=False),  # the point the bundle started from
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("bundle", "state_id", "base_seq", "seq", name="movierec_snapshots_point"),
    )
    return StateTables(md, events, items, meta, workers, idempotency, snapshots)
