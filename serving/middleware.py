"""ASGI middleware that guards every request: the request-body size limit and the time budget.

Both answer in JSON, as the routes do, and sit outside the routing so that no route ever sees a
body over the limit or holds a client past the budget.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer with ``body`` as JSON straight from the middleware (no route runs)."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodyLimitMiddleware:
    """413 for request bodies over ``max_bytes``, before any route parses them.

    A declared ``Content-Length`` is checked up front. A chunked body (no length) is read
    here up to the limit and replayed to the app, so no route ever holds more than
    ``max_bytes`` of request body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        too_large = {"detail": f"request body is larger than {self.max_bytes} bytes"}
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await send_json(send, 400, {"detail": "invalid Content-Length header"})
                return
            if declared > self.max_bytes:
                await send_json(send, 413, too_large)
                return
        elif chunked:
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # client went away
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    await send_json(send, 413, too_large)
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)


class TimeoutMiddleware:
    """503 JSON for a request that runs longer than ``seconds``, so one slow or stuck request
    (a huge filter, a starved thread pool) cannot hold a client forever.

    The handler task is cancelled; a synchronous route keeps its worker thread until it returns
    (Python threads cannot be stopped) but its late answer is dropped. Admin routes are exempt:
    a reload legitimately takes as long as loading a bundle. If the response had already
    started when time ran out it cannot be replaced, and the connection is closed unfinished.
    """

    def __init__(self, app: ASGIApp, seconds: float, exempt: tuple[str, ...] = ("/admin/",)) -> None:
        self.app = app
        self.seconds = seconds
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.seconds <= 0 or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            # asyncio.timeout cancels this task at the deadline; wait_for would start a second
            # task for every request
            async with asyncio.timeout(self.seconds):
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            log.warning("%s %s exceeded the %.3gs request budget", scope["method"], scope["path"], self.seconds)
            if started:
                raise
            await send_json(
                send,
                503,
                {"detail": f"request took longer than {self.seconds:g} s and was abandoned; retry later"},
                headers=[(b"retry-after", b"1")],
            )
