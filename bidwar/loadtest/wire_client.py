"""One named protocol client for the load test: connect, join, read, request.

:class:`WireClient` owns what a client keeps across connections (its session
token, the last seq, its requests and their replies) and the checks on them;
subclasses add behaviour through the ``on_*`` hooks, which run on the trio
thread in arrival order.  It is deliberately leaner than
:mod:`bidwar.client`: a load test must see every reconnect, resend and gap
itself rather than have them smoothed over.
"""

import contextlib
import dataclasses
import itertools
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    DisconnectionTimeout,
    WebSocketConnection,
    open_websocket_url,
)

from bidwar.loadtest.client_state import LotView, Request, RequestLedger, SeqTracker
from bidwar.loadtest.metrics import GroupTally

log = logging.getLogger("bidwar.loadtest")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where and how to connect; ``ssl_context`` is None for ``ws://``."""

    url: str
    ssl_context: ssl.SSLContext | None
    # Generous: a client that gives up mid-handshake turns a slow server
    # into a failed connection, and adds a reconnect to its load.
    connect_timeout_s: float = 60.0
    join_timeout_s: float = 60.0
    close_timeout_s: float = 2.0


class JoinFailed(Exception):
    """The server refused or never answered the ``hello``."""


class WireClient:
    """A client that joins as ``name`` and resumes its session on reconnect."""

    def __init__(self, name: str, target: Target, tally: GroupTally) -> None:
        self.name = name
        self.target = target
        self.tally = tally
        self.view = LotView()
        self.seqs = SeqTracker(name, tally)
        self.ledger = RequestLedger(name, tally)
        self.session: str | None = None
        self.messages = 0
        self.joins = 0
        self.fresh_joins = 0
        self._ids = itertools.count(1)
        self._hello_id: str | None = None
        self._hello_reply: dict[str, Any] | None = None

    # ----------------------------------------------------------- connection

    @contextlib.asynccontextmanager
    async def connected(
        self, *, message_queue_size: int = 1
    ) -> AsyncIterator[WebSocketConnection]:
        """Open a connection; on leaving, close it (code 1000) if still open.

        Raises ``trio_websocket.HandshakeError`` or ``OSError`` when the
        connection cannot be made.
        """
        left_cleanly = False
        try:
            async with open_websocket_url(
                self.target.url,
                self.target.ssl_context,
                connect_timeout=self.target.connect_timeout_s,
                disconnect_timeout=self.target.close_timeout_s,
                message_queue_size=message_queue_size,
                receive_buffer_size=None,
            ) as websocket:
                self.tally.connections_made += 1
                yield websocket
                left_cleanly = True
                if websocket.closed is None:
                    self.tally.closes["client"] += 1
        except DisconnectionTimeout:
            if not left_cleanly:
                raise  # never swallow what the body raised (a cancellation)
            # Our close frame was not answered in time: the connection is
            # over all the same, and it is not a failure to connect.
            self.tally.closes["close timed out"] += 1

    async def join(self, websocket: WebSocketConnection) -> dict[str, Any]:
        """Send ``hello`` (resuming when a session is known); return the result.

        Frames that arrive before the reply (the snapshot usually does) are
        handled as usual.  Raises :class:`JoinFailed` when refused or not
        answered within the join timeout.
        """
        hello: dict[str, Any] = {
            "type": "hello",
            "id": self._new_id("h"),
            "name": self.name,
        }
        if self.session is not None and self.seqs.last_seq is not None:
            hello.update(session=self.session, last_seq=self.seqs.last_seq)
        else:
            self.seqs.fresh_join()
            self.fresh_joins += 1
        self._hello_id, self._hello_reply = hello["id"], None
        await websocket.send_message(json.dumps(hello))

        with trio.move_on_after(self.target.join_timeout_s):
            while self._hello_reply is None:
                self.handle_frame(await websocket.get_message())
        reply = self._hello_reply
        if reply is None or reply["type"] != "accepted":
            reason = "no reply" if reply is None else reply.get("reason")
            self.tally.replies[f"hello:{reason}"] += 1
            raise JoinFailed(f"{self.name}: hello refused: {reason}")

        self.tally.replies["hello:accepted"] += 1
        self.joins += 1
        self.session = reply["result"]["session"]
        return reply["result"]

    async def read_until_closed(self, websocket: WebSocketConnection) -> None:
        """Handle frames until the server closes; records the close code."""
        try:
            while True:
                self.handle_frame(await websocket.get_message())
        except ConnectionClosed as closed:
            self.record_close(closed)

    def record_close(self, closed: ConnectionClosed) -> None:
        code = closed.reason.code if closed.reason is not None else None
        self.tally.closes[str(code) if code is not None else "none"] += 1

    # -------------------------------------------------------------- requests

    async def send_request(
        self, websocket: WebSocketConnection, kind: str, **fields: Any
    ) -> str:
        """Send a new request with a fresh id; return the id."""
        request_id = self._new_id(kind[0])
        frame = json.dumps({"type": kind, "id": request_id, **fields})
        self.ledger.sent(request_id, kind, frame, time.perf_counter())
        await websocket.send_message(frame)
        return request_id

    async def resend_unanswered(self, websocket: WebSocketConnection) -> None:
        """Send every unanswered request again with its original id."""
        for request_id, request in list(self.ledger.unanswered.items()):
            self.ledger.resent(request_id, time.perf_counter())
            await websocket.send_message(request.frame)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    # ---------------------------------------------------------------- frames

    def handle_frame(self, text: str | bytes) -> None:
        """Check and dispatch one server message (one frame per line)."""
        received_ms = time.time() * 1000
        for line in text.splitlines():
            self._handle_one(json.loads(line), received_ms)

    def _handle_one(self, data: dict[str, Any], received_ms: float) -> None:
        self.messages += 1
        kind = data["type"]

        if kind in ("accepted", "rejected"):
            self._on_reply_frame(data)
        elif kind == "snapshot":
            self.seqs.on_snapshot(data["seq"])
            self.view.apply_snapshot(data["lot"])
            self.on_snapshot(data)
        elif "seq" in data:
            self.seqs.on_event(data["seq"])
            self.view.apply_event(data)
            self.on_event(data, received_ms)

    def _on_reply_frame(self, reply: dict[str, Any]) -> None:
        if reply.get("id") is not None and reply["id"] == self._hello_id:
            self._hello_reply = reply
            return
        request = self.ledger.on_reply(reply, time.perf_counter())
        if request is not None:
            self.on_reply(request, reply)

    # ----------------------------------------------------------------- hooks

    def on_event(self, event: dict[str, Any], received_ms: float) -> None:
        """A sequenced event arrived (already checked and applied to the view)."""

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        """A snapshot arrived (already checked and applied to the view)."""

    def on_reply(self, request: Request, reply: dict[str, Any]) -> None:
        """The first reply to ``request`` arrived."""
