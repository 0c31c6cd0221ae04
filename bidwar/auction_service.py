"""The auction service: secure WebSocket connections of bidders and the host.

Each connection is three tasks in one nursery: a reader that parses frames
and hands requests to the room, a writer that drains the connection's
:class:`~bidwar.fanout.Outbox`, and a keepalive that pings.  Everything the
connection owes the client goes through the outbox, so the room never waits
on a socket.  When any of the three decides the connection is over, the
nursery is cancelled, the room is told, and the socket is closed with a code
that says why (docs/protocol.md, "Close codes").
"""

import contextlib
import dataclasses
import gc
import itertools
import logging
import ssl

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

from bidwar import protocol
from bidwar.fanout import Outbox
from bidwar.protocol import RequestError
from bidwar.ratelimit import Rate, TokenBucket
from bidwar.room import AuctionRoom, Session

log = logging.getLogger("bidwar.auction")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_SLOW = 4001
CLOSE_IDLE = 4002

# Frames sent together in one WebSocket message when several are waiting.
MAX_FRAMES_PER_MESSAGE = 256
# Net new container objects between young garbage collections (default 700).
GC_YOUNG_THRESHOLD = 50_000


@dataclasses.dataclass(frozen=True)
class AuctionServiceConfig:
    bind: str = "127.0.0.1"
    port: int = 8765
    max_message_bytes: int = 16 * 1024
    max_connections: int = 5_000
    max_queued_events: int = 256
    max_queued_replies: int = 1_024
    # A client whose socket takes nothing for this long is dropped (4001).
    send_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    pong_timeout_s: float = 20.0
    # From TCP accept to the end of the WebSocket upgrade, then to hello.
    handshake_timeout_s: float = 10.0
    hello_timeout_s: float = 10.0
    close_timeout_s: float = 1.0
    max_bad_frames: int = 20
    request_rate: Rate = Rate(per_s=20, burst=40)
    bid_rate: Rate = Rate(per_s=10, burst=20)
    chat_rate: Rate = Rate(per_s=2, burst=5)


_connection_numbers = itertools.count(1)


async def serve_auction(
    config: AuctionServiceConfig,
    room: AuctionRoom,
    *,
    ssl_context: ssl.SSLContext | None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve bidders until cancelled; ``started()`` with the bound port.

    On cancellation every open connection is closed with code 1001.
    """
    open_connections = 0

    async def handle(request: WebSocketRequest) -> None:
        nonlocal open_connections
        if open_connections >= config.max_connections:
            log.warning("refused a connection: %d already open", open_connections)
            await request.reject(503, body=b"too many connections\n")
            return

        open_connections += 1
        try:
            await serve_connection(request, room, config)
        finally:
            open_connections -= 1

    with _gc_tuned_for_many_connections():
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: serve_websocket(
                    handle,
                    config.bind,
                    config.port,
                    ssl_context=ssl_context,
                    max_message_size=config.max_message_bytes,
                    connect_timeout=config.handshake_timeout_s,
                    task_status=task_status,
                )
            )
            port = server.port
            scheme = "wss" if ssl_context else "ws"
            log.info(
                "auction service listening on %s://%s:%d/", scheme, config.bind, port
            )
            task_status.started(port)


async def serve_connection(
    request: WebSocketRequest, room: AuctionRoom, config: AuctionServiceConfig
) -> None:
    """Accept one client and serve it until it leaves.

    Never raises except for cancellation: whatever goes wrong with one
    connection (a peer that resets mid-handshake, or a bug) is logged and
    stays with that connection, because an exception escaping a handler
    would stop the whole server.
    """
    try:
        websocket = await request.accept()
        await Connection(websocket, room, config).serve()
    except* (ConnectionClosed, OSError, trio.BrokenResourceError) as group:
        log.info("a connection dropped during its handshake: %r", group.exceptions[0])
    except* Exception as group:
        log.error("a connection failed; the others carry on", exc_info=group)


@contextlib.contextmanager
def _gc_tuned_for_many_connections():
    """Collect cyclic garbage less often while serving (restored on exit).

    A thousand TLS connections are over a million long-lived objects.  With
    the default thresholds (700, 10, 10), frames that sit in queues for a few
    hundred milliseconds survive the young collections and keep triggering
    full ones: in a 1,000-bidder war that was a full collection every 1-2 s,
    each stopping the only thread for 200-600 ms, and it found nothing to
    free.  A larger first generation lets short-lived objects die by
    reference counting first; full collections then come only from real
    growth.  Memory stays bounded: the collector still runs, just later.
    """
    previous = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, previous[1], previous[2])
    try:
        yield
    finally:
        gc.set_threshold(*previous)


class Connection:
    """One client's connection; see the module docstring for its tasks."""

    def __init__(
        self,
        websocket: WebSocketConnection,
        room: AuctionRoom,
        config: AuctionServiceConfig,
    ) -> None:
        self.connection_id = f"c{next(_connection_numbers):x}"
        self.outbox = Outbox(
            room.snapshot_frame,
            max_events=config.max_queued_events,
            max_direct=config.max_queued_replies,
        )
        self._websocket = websocket
        self._room = room
        self._config = config
        self._session: Session | None = None
        self._close_code = CLOSE_NORMAL
        # One deadline for the whole wait: frames that are not a hello do not
        # buy a client more time.
        self._hello_deadline = trio.current_time() + config.hello_timeout_s
        self._close_reason: str | None = None
        self._bad_frames = 0
        self._tasks = trio.CancelScope()
        self._limits = {
            "any": TokenBucket(config.request_rate),
            "bid": TokenBucket(config.bid_rate),
            "message": TokenBucket(config.chat_rate),
        }

    def close_soon(self, code: int, reason: str) -> None:
        """End this connection with ``code``; returns at once."""
        if self._close_code == CLOSE_NORMAL:
            self._close_code, self._close_reason = code, reason
        self._tasks.cancel()

    async def serve(self) -> None:
        """Run until the client leaves or is closed; always closes the socket."""
        log.info("[%s] connected from %s", self.connection_id, self._peer_address())
        try:
            with self._tasks:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop)
                    nursery.start_soon(self._keepalive)
                    await self._read_loop()
                    nursery.cancel_scope.cancel()
        except* trio.Cancelled:
            # Cancelled from outside (our own scope absorbs its own cancel):
            # the server is stopping.  It may arrive grouped, hence except*.
            self._close_code = CLOSE_GOING_AWAY
            self._close_reason = "server shutting down"
            raise
        finally:
            if self._session is not None:
                self._room.leave(self._session, self)
            await self._close()

    def _peer_address(self) -> str:
        try:
            endpoint = self._websocket.remote
        except OSError:
            return "a peer already gone"  # reset before we asked (ENOTCONN)
        address = getattr(endpoint, "address", None)
        port = getattr(endpoint, "port", None)
        return f"{address}:{port}" if address else str(endpoint)

    # --------------------------------------------------------------- reading

    async def _read_loop(self) -> None:
        while True:
            try:
                frame = await self._receive()
            except ConnectionClosed as closed:
                log.debug("[%s] closed by peer: %s", self.connection_id, closed.reason)
                return
            if frame is None:
                self.close_soon(CLOSE_POLICY, "expected hello")
                return
            self._handle_frame(frame)

    async def _receive(self) -> str | bytes | None:
        if self._session is not None:
            return await self._websocket.get_message()
        with trio.move_on_at(self._hello_deadline):
            return await self._websocket.get_message()
        return None

    def _handle_frame(self, frame: str | bytes) -> None:
        try:
            request = protocol.parse_request(frame)
        except RequestError as error:
            self._refuse(error.request_id, error)
            self._count_bad_frame()
            return

        if not self._within_rate(request.type):
            self._refuse(
                request.id,
                RequestError("rate_limited", "too many requests: slow down and retry"),
            )
            return

        try:
            self._route(request)
        except RequestError as error:
            self._refuse(request.id, error)

    def _route(self, request: protocol.Request) -> None:
        if isinstance(request, protocol.Hello):
            if self._session is not None:
                raise RequestError(
                    "already_joined", "this connection has already joined"
                )
            self._session = self._room.join(request, self)
        elif self._session is None:
            raise RequestError("not_joined", "send hello first")
        else:
            self._room.handle(self._session, request)

    def _within_rate(self, request_type: str) -> bool:
        specific = self._limits.get(request_type)
        allowed = self._limits["any"].allow()
        return allowed and (specific is None or specific.allow())

    def _refuse(self, request_id: str | None, error: RequestError) -> None:
        log.debug("[%s] rejected %s: %s", self.connection_id, request_id, error.message)
        self.outbox.push_direct(
            protocol.rejected(request_id, error.reason, error.message)
        )

    def _count_bad_frame(self) -> None:
        self._bad_frames += 1
        if self._bad_frames >= self._config.max_bad_frames:
            log.warning(
                "[%s] closing: %d bad frames", self.connection_id, self._bad_frames
            )
            self.close_soon(CLOSE_POLICY, "too many bad frames")

    # --------------------------------------------------------------- writing

    async def _write_loop(self) -> None:
        while True:
            first = await self.outbox.next_frame()
            # Everything else already queued rides in the same WebSocket
            # message, one JSON object per line: under load a connection then
            # costs one TLS write per turn instead of one per event.
            frames = [first, *self.outbox.take_ready(MAX_FRAMES_PER_MESSAGE - 1)]
            with trio.CancelScope(shield=True) as sending:
                # Shielded: a send cut off halfway leaves the TLS stream
                # unusable, and then not even the close frame could follow.
                # The deadline still bounds it.
                sending.deadline = trio.current_time() + self._config.send_timeout_s
                try:
                    await self._websocket.send_message("\n".join(frames))
                except ConnectionClosed:
                    self._tasks.cancel()
                    return
            if sending.cancelled_caught:
                log.warning(
                    "[%s] closing: sending stalled for %.0f s",
                    self.connection_id,
                    self._config.send_timeout_s,
                )
                self.close_soon(CLOSE_TOO_SLOW, "too_slow")
                return

    async def _keepalive(self) -> None:
        while True:
            await trio.sleep(self._config.ping_interval_s)
            with trio.move_on_after(self._config.pong_timeout_s) as timer:
                try:
                    await self._websocket.ping()
                except ConnectionClosed:
                    return
            if timer.cancelled_caught:
                log.info(
                    "[%s] closing: no pong for %.0f s",
                    self.connection_id,
                    self._config.pong_timeout_s,
                )
                self.close_soon(CLOSE_IDLE, "idle")
                return

    async def _close(self) -> None:
        """Send the close frame (briefly: a dead peer must not hold us)."""
        log.info(
            "[%s] closed (%d%s)",
            self.connection_id,
            self._close_code,
            f" {self._close_reason}" if self._close_reason else "",
        )
        # Each step gets half the time, so a peer that stalls the "bye" still
        # gets the close frame attempt, and aclose() always closes the socket.
        step_s = self._config.close_timeout_s / 2
        with trio.CancelScope(shield=True):
            if self._close_reason and self._close_code != CLOSE_NORMAL:
                with trio.move_on_after(step_s):
                    await self._send_queued_and_bye()
            with trio.move_on_after(step_s):
                await self._websocket.aclose(self._close_code, self._close_reason)

    async def _send_queued_and_bye(self) -> None:
        """Deliver what is already owed (say, the rejection of the frame that
        crossed the bad-frame limit), then say why we are closing."""
        frames = []
        if self._close_code not in (CLOSE_TOO_SLOW, CLOSE_IDLE):
            frames = self.outbox.take_ready()
        frames.append(protocol.encode({"type": "bye", "reason": self._close_reason}))
        with contextlib.suppress(ConnectionClosed):
            for frame in frames:
                await self._websocket.send_message(frame)
