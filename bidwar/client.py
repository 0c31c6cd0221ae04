"""A bidder's connection that survives drops: join, resume, retry.

:class:`BidderClient` keeps one WebSocket to the auction service open for as
long as it runs.  When the connection drops (network loss, server restart,
idle timeout) it reconnects by itself with exponential backoff and jitter,
resumes its session from the last sequence number it saw, and sends every
request that had no reply yet again *with the same id*, which the server
answers from memory instead of acting twice.

Every frame from the server is handed to ``on_frame`` after the client's
:class:`~bidwar.view.AuctionView` has been updated, in arrival order, on the
trio thread.  Status changes of the connection itself (``reconnecting``,
``reconnected``) are handed to ``on_status``.
"""

import contextlib
import dataclasses
import itertools
import json
import logging
import random
import secrets
import ssl
import time
from collections.abc import Callable
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection

from bidwar import connect
from bidwar.view import AuctionView, SequenceGap

log = logging.getLogger("bidwar.client")

# Close codes after which reconnecting would be wrong, not merely futile.
_FINAL_CLOSE_CODES = {1000, 1008, 1009, 4000}


class JoinRefused(Exception):
    """The server refused the hello (name taken, bad session...)."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class _ResyncNeeded(Exception):
    """The view missed an event: reconnect and resume to fill the gap."""


class ConnectionLost(Exception):
    """The connection ended for good (closed by the server, or reconnect is off)."""


# Failures after which the client tries again (when it has joined before).
_RETRYABLE = (
    OSError,
    connect.ConnectError,
    HandshakeError,
    ConnectionClosed,
    trio.BrokenResourceError,
    trio.TooSlowError,
    _ResyncNeeded,
)


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    url: str
    name: str
    ssl_context: ssl.SSLContext | None = None
    reconnect: bool = True
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 5.0
    max_message_bytes: int = 1024 * 1024
    connect_timeout_s: float = 10.0
    # A session token from an earlier run, to come back as the same bidder.
    session: str | None = None
    # The server closes (1009) on larger frames; refuse them here instead.
    max_request_bytes: int = 16 * 1024


@dataclasses.dataclass
class _Pending:
    frame: str
    sent_at_ms: int
    reply: dict[str, Any] | None = None
    done: trio.Event = dataclasses.field(default_factory=trio.Event)


def _local_ms() -> int:
    return time.time_ns() // 1_000_000


class BidderClient:
    """One bidder's self-healing connection; see the module docstring."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        on_frame: Callable[[dict[str, Any]], None] = lambda frame: None,
        on_status: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.config = config
        self.view = AuctionView()
        self.session: str | None = config.session
        self._on_frame = on_frame
        self._on_status = on_status
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(3)
        self._pending: dict[str, _Pending] = {}
        self._websocket: WebSocketConnection | None = None
        self._closing = False
        self._started = False
        self._stopped = trio.Event()
        self._joined = False
        self._interrupt: trio.CancelScope | None = None

    # ------------------------------------------------------------ requests

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Send a request and wait for its reply (across reconnects).

        Cancelling the wait does not withdraw the request: it may still take
        effect, and its reply is then dropped.
        """
        request_id = f"{self._id_prefix}-{next(self._ids)}"
        frame = json.dumps({"type": kind, "id": request_id, **fields})
        if len(frame.encode()) > self.config.max_request_bytes:
            # Sent, it would get the connection closed, and re-sent after
            # every reconnect, forever.
            return {
                "type": "rejected",
                "id": request_id,
                "reason": "too_large",
                "message": f"at most {self.config.max_request_bytes} bytes a request",
            }
        pending = _Pending(frame, _local_ms())
        self._pending[request_id] = pending
        try:
            await self._send_if_connected(frame)
            await pending.done.wait()
        finally:
            self._pending.pop(request_id, None)
        assert pending.reply is not None
        return pending.reply

    async def drain(self) -> None:
        """Wait until every request sent so far has its reply."""
        while self._pending:
            await next(iter(self._pending.values())).done.wait()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # ---------------------------------------------------------- connection

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Stay connected until :meth:`close`; ``started()`` after the first join.

        Raises :class:`JoinRefused` if the server refuses the name, and
        :class:`ConnectionLost` when the server ends the session for good.
        """
        attempt = 0
        try:
            while not self._closing:
                self._joined = False
                try:
                    await self._connect_once(task_status, attempt)
                except _RETRYABLE as error:
                    if self._closing:
                        return
                    if not self._started or not self._should_retry(error):
                        raise ConnectionLost(_describe(error)) from None
                finally:
                    self._websocket = None
                if self._closing:
                    return
                # A connection that got as far as joining starts the backoff
                # over: each outage begins with quick retries.
                attempt = 1 if self._joined else attempt + 1
                delay = self._backoff(attempt)
                self._on_status(f"reconnecting (attempt {attempt}, in {delay:.1f} s)")
                with self._interruptible():
                    await trio.sleep(delay)
        finally:
            self._stopped.set()

    async def close(self) -> None:
        """Leave: close the connection normally (code 1000) and stop :meth:`run`.

        Returns once ``run()`` has finished, or after two seconds.
        """
        self._closing = True
        if self._interrupt is not None:
            self._interrupt.cancel()
        with trio.move_on_after(2):
            await self._stopped.wait()

    def _interruptible(self) -> trio.CancelScope:
        """A scope that :meth:`close` cancels: the receive loop or a backoff.

        Only that wait is cancelled, not the connection's own tasks, so the
        closing handshake can still complete on the way out.
        """
        self._interrupt = trio.CancelScope()
        if self._closing:
            self._interrupt.cancel()
        return self._interrupt

    async def _connect_once(self, task_status: Any, attempt: int) -> None:
        async with connect.open_websocket(
            self.config.url,
            self.config.ssl_context,
            timeout_s=self.config.connect_timeout_s,
            max_message_bytes=self.config.max_message_bytes,
        ) as websocket:
            following = await self._join(websocket, resumed=self._started)
            self._joined = True
            self._websocket = websocket
            for frame in following:
                self._handle_frame(frame)
            if not self._started:
                self._started = True
                task_status.started()
            await self._resend_pending(websocket)
            with self._interruptible():
                await self._receive_loop(websocket)

    async def _join(
        self, websocket: WebSocketConnection, resumed: bool
    ) -> list[dict[str, Any]]:
        """Say hello; return the frames that came in the same message after
        the reply (the snapshot or the first replayed events)."""
        hello: dict[str, Any] = {
            "type": "hello",
            "id": "hello",
            "name": self.config.name,
        }
        if self.session is not None:
            hello["session"] = self.session
        if self._started:
            hello["last_seq"] = self.view.last_seq

        sent_at = _local_ms()
        await websocket.send_message(json.dumps(hello))
        reply, *following = _frames(await websocket.get_message())
        if reply.get("reason") == "bad_session" and not self._started:
            # A token saved by an earlier run, for another server (or its
            # data was reset): join afresh instead.
            log.info("the saved session was refused; joining without it")
            self.session = None
            hello.pop("session")
            await websocket.send_message(json.dumps({**hello, "id": "hello"}))
            reply, *following = _frames(await websocket.get_message())
        if reply.get("id") != "hello":
            raise ConnectionLost(f"the server answered hello with {reply!r}")
        if reply.get("type") != "accepted":
            await websocket.aclose(1000, "refused")
            raise JoinRefused(reply.get("reason", "?"), reply.get("message", ""))

        result = reply["result"]
        self.session = result["session"]
        self.view.set_clock(result["server_time_ms"], sent_at, _local_ms())
        if resumed:
            self._on_status(f"reconnected (resuming after event {self.view.last_seq})")
        return following

    async def _resend_pending(self, websocket: WebSocketConnection) -> None:
        for pending in list(self._pending.values()):
            if not pending.done.is_set():
                await websocket.send_message(pending.frame)

    async def _receive_loop(self, websocket: WebSocketConnection) -> None:
        while True:
            # One message may carry several frames, one JSON object per line.
            for frame in _frames(await websocket.get_message()):
                self._handle_frame(frame)

    def _handle_frame(self, frame: dict[str, Any]) -> None:
        try:
            fresh = self.view.apply(frame)
        except SequenceGap as gap:
            # Cannot happen with a correct server; resync rather than show a
            # wrong price.  Closing makes run() reconnect and resume.
            log.warning("%s; reconnecting to resync", gap)
            raise _ResyncNeeded(str(gap)) from gap
        if not fresh:
            return

        if frame.get("type") in ("accepted", "rejected"):
            pending = self._pending.get(frame.get("id"))
            if pending is not None and not pending.done.is_set():
                pending.reply = frame
                pending.done.set()
        self._on_frame(frame)

    async def _send_if_connected(self, frame: str) -> None:
        websocket = self._websocket
        if websocket is None:
            return  # sent on reconnect by _resend_pending
        # If the connection just died, the receive loop notices and
        # reconnects, and the request is sent again then.
        with contextlib.suppress(ConnectionClosed):
            await websocket.send_message(frame)

    def _should_retry(self, error: BaseException) -> bool:
        if not self.config.reconnect or self._closing:
            return False
        if isinstance(error, ConnectionClosed) and error.reason is not None:
            return error.reason.code not in _FINAL_CLOSE_CODES
        return True

    def _backoff(self, attempt: int) -> float:
        ceiling = min(
            self.config.backoff_max_s, self.config.backoff_initial_s * 2**attempt
        )
        # Full jitter: a room of bidders dropped together must not reconnect
        # together.
        return random.uniform(ceiling / 2, ceiling)


def _frames(message: str | bytes) -> list[dict[str, Any]]:
    """The frames in one server message: one JSON object per line."""
    return [json.loads(line) for line in message.splitlines()]


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionClosed) and error.reason is not None:
        reason = error.reason
        return f"closed by the server: {reason.code} {reason.reason or ''}".strip()
    return str(error) or type(error).__name__
