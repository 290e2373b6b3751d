"""``Idempotency-Key`` on the public writes: the header, a request body's fingerprint, and the
replay of a first answer.

The write and the record of its key are one transaction in the online state
(:class:`recommender.state.Idempotency`); this module stores the answer's bytes beside it and
sends them again to a retry.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header, HTTPException
from fastapi.responses import Response

from recommender.state import Idempotency, Remembered, StateError
from serving.freshness import unreadable

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        description="a client's key for this write (1-255 printable ASCII characters): a retry with the same key and body gets "
        "the first answer and writes nothing; the same key with another body is 422. Scoped by route (and user for "
        "ratings), remembered for MOVIEREC_IDEMPOTENCY_TTL seconds (a day by default).",
    ),
]


def checked_key(value: str | None) -> str | None:
    """The client's ``Idempotency-Key``, checked: 1..255 printable ASCII characters (422 otherwise)."""
    if value is None:
        return None
    if not value or len(value) > MAX_IDEMPOTENCY_KEY or not all(" " <= c <= "~" for c in value):
        raise ValueError(f"{IDEMPOTENCY_HEADER} header: 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters expected")
    return value


def fingerprint(payload: Any) -> str:
    """A request body's identity: sha256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def remembered(state: Any, idem: Idempotency) -> Remembered | None:
    """The record of a write already done under ``idem``'s key, if any."""
    try:
        return state.remembered(idem.scope, idem.key, idem.ttl)
    except Exception as e:
        raise unreadable(e) from e


def finish(state: Any, idem: Idempotency, body: bytes) -> str:
    """Store the answer of a write done under ``idem``'s key (the write itself is committed)."""
    try:
        return state.finish_idempotent(idem.scope, idem.key, body.decode())
    except Exception as e:
        log.error("online state not writable: %s", e)
        raise StateError(
            f"online state is not writable; the write was recorded, retry with the same {IDEMPOTENCY_HEADER} for its answer"
        ) from e


def replay(state: Any, first: Remembered, idem: Idempotency, build: Callable[[dict[str, Any]], bytes]) -> Response:
    """The first answer to a write done under ``idem``'s key, again (nothing is written).

    When the first request committed but its answer is not stored yet (it is being built, or its
    worker died in between), the answer is built from the record's draft and the state, and
    stored: the first answer stored wins, so the two requests still get the same bytes."""
    if first.fingerprint != idem.fingerprint:
        raise HTTPException(
            422, f"{IDEMPOTENCY_HEADER} {idem.key!r} was already used for a different request to this route; send a new key for a new request"
        )
    body = first.body
    if body is None:
        body = finish(state, idem, build(first.draft))
    return Response(body.encode(), status_code=first.status, media_type="application/json", headers={"Idempotent-Replayed": "true"})


def prior_answer(state: Any, idem: Idempotency, build: Callable[[dict[str, Any]], bytes]) -> Response | None:
    """The first answer again when ``idem``'s key was used before (:func:`replay`), else None:
    the write goes ahead."""
    first = remembered(state, idem)
    return None if first is None else replay(state, first, idem, build)


def answered(state: Any, idem: Idempotency | None, body: bytes, status: int = 200) -> Response:
    """A write's answer; under a key, stored first so that every retry gets these bytes."""
    if idem is not None:
        body = finish(state, idem, body).encode()
    return Response(body, status_code=status, media_type="application/json")
