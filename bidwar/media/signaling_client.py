"""The host's and viewers' end of the signaling protocol (docs/signaling.md)."""

from __future__ import annotations

import json
import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_websocket

from bidwar import connect

log = logging.getLogger("bidwar.media.signaling")

CONNECT_TIMEOUT_S = 10.0
GOODBYE_WAIT_S = 0.1


class SignalingError(Exception):
    """The signaling connection could not be used; the message is for users."""


class SignalingRejected(SignalingError):
    """The service refused our join; ``code`` is its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"signaling refused to join: {message} ({code})")
        self.code = code


class SignalingChannel:
    """A joined signaling connection: JSON objects in, JSON objects out."""

    def __init__(
        self, websocket: trio_websocket.WebSocketConnection, joined: dict[str, Any]
    ) -> None:
        self._websocket = websocket
        self.id: str = joined["id"]
        self.room: str = joined["room"]
        self.host_present: bool = bool(joined.get("host_present", False))

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message; raises SignalingError if the connection is gone."""
        try:
            await self._websocket.send_message(json.dumps(message))
        except trio_websocket.ConnectionClosed as closed:
            raise SignalingError(_closed_text(closed)) from None

    async def receive(self) -> dict[str, Any]:
        """Return the next message; raises SignalingError once closed."""
        try:
            text = await self._websocket.get_message()
        except trio_websocket.ConnectionClosed as closed:
            raise SignalingError(_closed_text(closed)) from None
        message = json.loads(text)
        log.debug("signaling sent %s", message.get("type"))
        return message

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            yield await self.receive()


@asynccontextmanager
async def open_signaling(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None,
    role: str,
    room: str,
    host_key: str | None = None,
) -> AsyncIterator[SignalingChannel]:
    """Connect to ``url`` (``wss://`` or, for tests, ``ws://``) and join ``room``.

    Raises SignalingRejected if the service refuses the join and
    SignalingError if it cannot be reached (including a certificate that does
    not verify). Leaving the block, even by cancellation, sends a close frame
    so the service tells the other side at once that we left.
    """
    join: dict[str, Any] = {"type": "join", "role": role, "room": room}
    if host_key is not None:
        join["host_key"] = host_key
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise SignalingError(f"bad signaling URL {url!r}: expected wss://HOST:PORT/")

    async with trio.open_nursery() as nursery:
        try:
            stream = await connect.open_stream(url, ssl_context, CONNECT_TIMEOUT_S)
        except connect.ConnectError as error:
            raise SignalingError(str(error)) from None
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                websocket = await trio_websocket.wrap_client_stream(
                    nursery, stream, parts.netloc, parts.path or "/"
                )
        except (trio.TooSlowError, trio_websocket.HandshakeError) as error:
            await trio.aclose_forcefully(stream)
            reason = str(error) or type(error).__name__
            raise SignalingError(f"no WebSocket at {url}: {reason}") from None

        try:
            channel = await _join(websocket, join)
            log.info("joined room %s as %s (id %s)", channel.room, role, channel.id)
            yield channel
        finally:
            await _say_goodbye(websocket)
            nursery.cancel_scope.cancel()


async def _join(
    websocket: trio_websocket.WebSocketConnection, join: dict[str, Any]
) -> SignalingChannel:
    try:
        await websocket.send_message(json.dumps(join))
        reply = json.loads(await websocket.get_message())
    except trio_websocket.ConnectionClosed as closed:
        raise SignalingError(_closed_text(closed)) from None
    if reply.get("type") == "error":
        raise SignalingRejected(reply.get("code", "?"), reply.get("message", ""))
    if reply.get("type") != "joined":
        raise SignalingError(f"unexpected reply to join: {reply.get('type')!r}")
    return SignalingChannel(websocket, reply)


async def _say_goodbye(websocket: trio_websocket.WebSocketConnection) -> None:
    # We usually leave by being cancelled, which also cancels the library's
    # reader task, so the closing handshake cannot complete. Send the close
    # frame anyway (the service then sees a normal 1000 close, not a dropped
    # connection) and wait only briefly for the reply that cannot come.
    with trio.CancelScope(shield=True), trio.move_on_after(GOODBYE_WAIT_S):
        await websocket.aclose()


def _closed_text(closed: trio_websocket.ConnectionClosed) -> str:
    reason = closed.reason
    return f"signaling closed the connection ({reason.code} {reason.reason or ''})"
