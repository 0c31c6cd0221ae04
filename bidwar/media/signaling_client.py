"""The host's and viewers' end of the signaling protocol (docs/signaling.md).

``open_signaling`` is one joined connection. ``stay_joined`` keeps a client
in its room across signaling restarts: a *lost* connection (the server went
away, could not be reached, or did not answer in time) is retried with
backoff, while a *refusal* (a wrong host key, a second publisher) is final.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import trio
import trio_websocket

from bidwar import connect
from bidwar.media.errors import single_errors

log = logging.getLogger("bidwar.media.signaling")

CONNECT_TIMEOUT_S = 10.0
GOODBYE_WAIT_S = 0.1
BACKOFF_INITIAL_S = 0.25
BACKOFF_MAX_S = 5.0

# 1001: the server is shutting down; 1006: the connection dropped without a
# close frame. Any other close code means something a retry would not fix.
_LOST_CLOSE_CODES = frozenset({1001, 1006})


class SignalingError(Exception):
    """The signaling connection could not be used; the message is for users."""


class SignalingLost(SignalingError):
    """The connection went away or could not be made; trying again may work."""


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
            raise _closed_error(closed) from None

    async def receive(self) -> dict[str, Any]:
        """Return the next message; raises SignalingError once closed."""
        try:
            text = await self._websocket.get_message()
        except trio_websocket.ConnectionClosed as closed:
            raise _closed_error(closed) from None
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

    Raises SignalingRejected if the service refuses the join, SignalingLost
    if it cannot be reached (including a certificate that does not verify)
    or does not answer in time, and SignalingError for a bad URL. Leaving
    the block, even by cancellation, sends a close frame so the service
    tells the other side at once that we left.
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
            raise SignalingLost(str(error)) from None
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                websocket = await trio_websocket.wrap_client_stream(
                    nursery, stream, parts.netloc, parts.path or "/"
                )
        except (trio.TooSlowError, trio_websocket.HandshakeError) as error:
            await trio.aclose_forcefully(stream)
            reason = str(error) or type(error).__name__
            raise SignalingLost(f"no WebSocket at {url}: {reason}") from None

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
        with trio.fail_after(CONNECT_TIMEOUT_S):
            await websocket.send_message(json.dumps(join))
            reply = json.loads(await websocket.get_message())
    except trio_websocket.ConnectionClosed as closed:
        raise _closed_error(closed) from None
    except trio.TooSlowError:
        raise SignalingLost("signaling did not answer our join") from None
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


def _closed_error(closed: trio_websocket.ConnectionClosed) -> SignalingError:
    reason = closed.reason
    text = f"signaling closed the connection ({reason.code} {reason.reason or ''})"
    if reason.code in _LOST_CLOSE_CODES:
        return SignalingLost(text)
    return SignalingError(text)


async def stay_joined(
    open_channel: Callable[[], AbstractAsyncContextManager[SignalingChannel]],
    serve: Callable[[SignalingChannel], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``serve(channel)`` on a joined channel, joining again when it is lost.

    ``task_status.started()`` fires after the first join. Any error before
    that propagates, as does anything but SignalingLost afterwards (notably
    SignalingRejected); a lost connection is retried after a backoff of
    0.25 s doubling to 5 s, with jitter, started over after each join.
    ``serve`` should end its own work with the connection (its tasks in a
    nursery inside it); returning from ``serve`` returns from here.
    Cancellation interrupts the connection or the backoff wait alike.
    """
    started = False
    attempt = 0
    while True:
        joined = False
        try:
            with single_errors():
                async with open_channel() as channel:
                    joined = True
                    if not started:
                        started = True
                        task_status.started()
                    await serve(channel)
            return
        except SignalingLost as error:
            if not started:
                raise
            problem = error

        # Each outage begins with quick retries.
        attempt = 1 if joined else attempt + 1
        delay_s = _backoff_s(attempt)
        log.warning(
            "signaling lost; reconnecting in %.2f s (attempt %d): %s",
            delay_s,
            attempt,
            problem,
        )
        await trio.sleep(delay_s)


def _backoff_s(attempt: int) -> float:
    ceiling = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** (attempt - 1))
    # Jitter: a room of viewers dropped together must not return together.
    return random.uniform(ceiling / 2, ceiling)
