"""Serving settings from the environment (prefix ``MOVIEREC_``), kept apart from training config.

``MOVIEREC_MODEL`` is either one bundle directory or a directory holding several bundles (the
newest valid one is served, ``POST /admin/reload`` moves to a newer one, ``POST /admin/rollback``
back to the previous one; the newest ``MOVIEREC_KEEP_BUNDLES`` are kept). Live ratings, added
movies and generated ids go to the online state: ``MOVIEREC_STATE_URL`` (``postgresql://...``
when several machines serve), else SQLite in ``MOVIEREC_STATE_DIR`` (default: ``<model>.state``
beside the served bundles). ``MOVIEREC_API_KEY`` turns the admin routes on (without it they
answer 403). ``MOVIEREC_WRITE_KEY`` guards every public write: rating posts and added movies then
need it (or the admin key) in ``X-API-Key``. Without a write key, rating posts are open and adding
a movie needs the admin key when one is set (open when neither is). ``Idempotency-Key`` on a write
is remembered for ``MOVIEREC_IDEMPOTENCY_TTL`` seconds.

What a reload or rollback chooses is recorded in the online state and followed by every worker
of every server sharing it (``MOVIEREC_WATCH_INTERVAL``, ``MOVIEREC_CONVERGE_TIMEOUT``); the
``MOVIEREC_STATE_*`` timeouts and pool sizes bound how long and how many connections a worker
spends on a PostgreSQL state (docs/reliability.md, section 9).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from recommender.state_db import StateLimits


class Settings(BaseSettings):
    """Everything the HTTP service reads at start-up."""

    model_config = SettingsConfigDict(env_prefix="MOVIEREC_", extra="ignore")

    model: Path | None = Field(None, description="bundle directory, or a directory of bundles (newest is served)")
    api_key: SecretStr | None = Field(None, description="admin key for X-API-Key; admin routes are off without it")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(64 * 1024, ge=1, description="larger request bodies get 413")
    request_timeout: float = Field(
        30.0, ge=0, description="seconds a request may take before it gets 503 (0: no limit; admin routes are exempt)"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated origins allowed by CORS; empty means CORS off"
    )
    report: Path | None = Field(None, description="HTML report linked from the page (default: report.html in or beside the bundle)")
    log_level: str = "info"
    threads: int = Field(
        1, ge=1, le=64,
        description="torch, FAISS and BLAS threads per worker process (movierec serve); the workers already use the cores, "
        "and a second thread per request only spins",
    )
    rank: bool = Field(True, description="re-score candidates with the bundle's ranker (off: two-tower order, much faster)")
    state_dir: Path | None = Field(
        None,
        description="folder of the SQLite online state (default: <model>.state beside the served bundles); never inside "
        "a bundle, which is checksummed, replaced on retraining and may be read-only",
    )
    state_url: str | None = Field(None, description="database URL of the online state (postgresql://...); overrides state_dir")
    write_key: SecretStr | None = Field(
        None, description="key (X-API-Key) that every public write needs (rating posts, added movies); the admin key works too"
    )
    idempotency_ttl: float = Field(
        24 * 3600, gt=0,
        description="seconds a write's Idempotency-Key is remembered; older keys may be purged, and a retry after that writes again",
    )
    keep_bundles: int = Field(3, ge=1, le=100, description="bundles kept in a serving directory; older ones are deleted after a reload")
    # ---- one service: every worker follows the bundle chosen in the online state -----------------
    watch_interval: float = Field(
        0.5, gt=0, le=60, description="seconds between a worker's looks at the chosen bundle (a reload or rollback through "
        "any worker or server reaches this one within this, plus the time to load the bundle)",
    )
    heartbeat_interval: float = Field(2.0, gt=0, le=300, description="seconds between a worker's records of what it serves")
    worker_expiry: float = Field(
        10.0, gt=0, le=3600, description="a worker unheard of for this many seconds counts as gone (prune no longer keeps "
        "its bundle, admin actions no longer wait for it)",
    )
    converge_timeout: float = Field(
        15.0, ge=0, le=600, description="seconds an admin action waits for every live worker to serve its choice before "
        "it answers (naming the ones still pending)",
    )
    # ---- PostgreSQL: how long the online state may keep a request waiting ---------------------------
    state_check_timeout: float = Field(
        1.0, gt=0, le=60, description="seconds a request waits for the online state's sequence check (and a catch-up waits "
        "for the database); past it, uncached answers get 503 with Retry-After, cached ones are still sent",
    )
    state_connect_timeout: float = Field(3.0, gt=0, le=300, description="seconds to open a connection to the state's server")
    state_statement_timeout: float = Field(30.0, ge=0, le=3600, description="server-side limit of one statement (0: none)")
    state_lock_timeout: float = Field(5.0, ge=0, le=3600, description="server-side limit of a lock wait, the writers' lock included")
    state_pool_size: int = Field(3, ge=1, le=100, description="connections kept open per worker for transactions")
    state_max_overflow: int = Field(1, ge=0, le=100, description="extra transaction connections per worker under load")
    state_read_pool_size: int = Field(2, ge=1, le=100, description="connections per worker for the per-request reads")
    state_pool_timeout: float = Field(5.0, gt=0, le=300, description="seconds to wait for a free connection")

    def state_limits(self) -> StateLimits:
        """The online state's timeouts and pool sizes (PostgreSQL) from these settings."""
        return StateLimits(
            connect_timeout=self.state_connect_timeout, statement_timeout=self.state_statement_timeout,
            lock_timeout=self.state_lock_timeout, pool_size=self.state_pool_size, max_overflow=self.state_max_overflow,
            read_pool_size=self.state_read_pool_size, pool_timeout=self.state_pool_timeout,
        )

    @property
    def state_location(self) -> str | None:
        """The online state's URL or folder (None: no model, so nowhere to put it)."""
        if self.state_url:
            return self.state_url
        if self.state_dir is not None:
            return str(self.state_dir)
        if self.model is None:
            return None
        model = Path(self.model).resolve()
        return str(model.parent / f"{model.name}.state")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """Accept ``a,b`` from the environment as well as a list in code."""
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("api_key", "write_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        """``MOVIEREC_API_KEY=`` (empty) must not turn admin on with an empty key."""
        if isinstance(value, str) and not value.strip():
            return None
        return value
