"""``movierec serve``: uvicorn (uvloop + httptools) over :func:`serving.app.create_app`.

One worker serves an app built here. Several workers are separate processes that each build
their own app from the import string ``serving.app:create_app``; they read the same settings from
the ``MOVIEREC_*`` environment variables, which :func:`serve` sets for them from its settings.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from serving.app import create_app
from serving.settings import Settings
from serving.tuning import limit_malloc_arenas, limit_threads

log = logging.getLogger(__name__)

WORKER_HEALTHCHECK_S = 60
"""Seconds a worker may take to answer uvicorn's liveness ping (starting up included)."""

_WORKER_SETTINGS = (
    "watch_interval", "heartbeat_interval", "worker_expiry", "converge_timeout",
    "state_check_timeout", "state_connect_timeout", "state_statement_timeout", "state_lock_timeout", "state_pool_size",
    "state_max_overflow", "state_read_pool_size", "state_pool_timeout", "max_body_bytes", "request_timeout",
    "idempotency_ttl",
)
"""Settings every worker reads from the environment, set from the launcher's settings."""


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) reaches this machine only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if host.lower() == "localhost":
        return True
    try:
        addresses = {info[4][0].split("%")[0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def warn_if_writes_are_open(settings: Settings) -> None:
    """One warning when the service listens beyond this machine and anyone may write."""
    if settings.write_key is not None or _is_loopback(settings.host):
        return
    what = "post ratings" if settings.api_key is not None else "post ratings and add movies"
    log.warning(
        "serving on %s, reachable from other machines, without MOVIEREC_WRITE_KEY: anyone who can connect may %s; "
        "set MOVIEREC_WRITE_KEY to require a key for every write", settings.host, what,
    )


def _export_for_workers(settings: Settings) -> None:
    """Set the environment the worker processes build their settings from."""
    if settings.model is not None:
        os.environ["MOVIEREC_MODEL"] = str(settings.model)
    if settings.cors_origins:
        os.environ["MOVIEREC_CORS_ORIGINS"] = ",".join(settings.cors_origins)
    for name in ("api_key", "write_key"):
        key = getattr(settings, name)
        if key is not None:
            os.environ[f"MOVIEREC_{name.upper()}"] = key.get_secret_value()
    for name in _WORKER_SETTINGS:
        os.environ[f"MOVIEREC_{name.upper()}"] = str(getattr(settings, name))
    if settings.state_location is not None:  # every worker opens the same state
        key = "MOVIEREC_STATE_URL" if settings.state_url else "MOVIEREC_STATE_DIR"
        os.environ[key] = settings.state_location


def serve(settings: Settings, workers: int = 1) -> None:
    """Run the service with uvicorn on ``settings.host:settings.port`` with ``workers`` processes."""
    import uvicorn

    warn_if_writes_are_open(settings)  # here, in the one process that starts the workers: one warning
    limit_malloc_arenas()
    limit_threads(settings.threads)
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": settings.log_level,
        "access_log": False,  # per-request log lines cost more than the request itself here
    }
    if workers <= 1:
        uvicorn.run(create_app(settings), **common)
        return
    _export_for_workers(settings)
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
        # uvicorn's supervisor kills a worker that does not answer its ping in time, and a
        # starting worker answers only once it has imported torch and the rest: with uvicorn's
        # default on a busy machine, new workers were killed while importing, over and over,
        # and one worker served alone
        common["timeout_worker_healthcheck"] = WORKER_HEALTHCHECK_S
    with tempfile.TemporaryDirectory(prefix="movierec-metrics-") as metrics_dir:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        uvicorn.run("serving.app:create_app", factory=True, workers=workers, **common)


def run_server(model: Path | str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """``movierec serve``: the other settings (API key, body limit, CORS) come from the environment."""
    serve(Settings(model=Path(model), host=host, port=port), workers=workers)
