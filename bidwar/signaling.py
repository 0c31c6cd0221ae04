"""The signaling service: rooms where one host's WebRTC offers meet viewers.

How this works
--------------
A room has at most one *publisher* (the host, who must present the host key)
and any number of *viewers*. The service never looks inside SDP; it only
routes it:

1. a viewer joins; if the room has a publisher, the publisher is told
   ``viewer_joined`` (otherwise it is told when a publisher arrives);
2. the publisher sends one ``offer`` per viewer, the service hands it to that
   viewer, and the viewer's ``answer`` goes back to the publisher;
3. when either side leaves, the other is told (``viewer_left`` /
   ``host_left``); viewers stay in the room and wait for the next host.

aiortc gathers every ICE candidate before it produces a description, so a
single offer and a single answer carry everything; there is no trickle.

Every connection has one reader (the handler task) and one writer task fed by
a bounded outbox, so a client that does not read can never stall another:
when its outbox is full it is closed with code 1008. Bad input is answered
with an ``error`` message and changes nothing else. docs/signaling.md is the
wire reference.
"""

from __future__ import annotations

import enum
import hmac
import json
import logging
import re
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
import trio_websocket

log = logging.getLogger("bidwar.signaling")

ROOM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008


@dataclass(frozen=True)
class SignalingConfig:
    """Options of the signaling service; sizes in bytes, durations in seconds."""

    bind: str = "127.0.0.1"
    port: int = 8766
    max_message_bytes: int = 64 * 1024
    max_sdp_bytes: int = 32 * 1024
    max_viewers: int = 500
    max_rooms: int = 64
    default_room: str = "main"
    outbox_messages: int = 64
    handshake_timeout_s: float = 10.0
    close_timeout_s: float = 2.0


class Role(enum.Enum):
    PUBLISHER = "publisher"
    VIEWER = "viewer"


class SignalingError(Exception):
    """A client sent something we refuse; ``code`` is sent back in the reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(eq=False)
class _Client:
    """One WebSocket connection, joined to at most one room."""

    id: str
    websocket: trio_websocket.WebSocketConnection
    outbox: trio.MemorySendChannel[str]
    scope: trio.CancelScope
    grace_s: float
    role: Role | None = None
    room: _Room | None = None
    awaiting_answer: bool = False
    close_request: tuple[int, str] | None = None

    def send(self, message: dict[str, Any]) -> None:
        """Queue ``message``; a client whose outbox is full is closed (1008)."""
        if self.close_request is not None:
            return
        try:
            self.outbox.send_nowait(json.dumps(message, separators=(",", ":")))
        except trio.WouldBlock:
            log.info("%s is not reading its messages: closing it", self.id)
            self.close(CLOSE_POLICY, "too slow: outbox full")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def close(self, code: int, reason: str) -> None:
        """Ask the writer to close with ``code``; cut it off after ``grace_s``."""
        if self.close_request is not None:
            return
        self.close_request = (code, reason)
        self.outbox.close()

        # A peer that never completes the closing handshake (or never reads)
        # must not hold its tasks forever.
        deadline = trio.current_time() + self.grace_s
        self.scope.deadline = min(self.scope.deadline, deadline)


@dataclass(eq=False)
class _Room:
    name: str
    publisher: _Client | None = None
    viewers: dict[str, _Client] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return self.publisher is None and not self.viewers


class _SignalingService:
    """Room bookkeeping and message routing; one instance per serve_signaling."""

    def __init__(
        self,
        config: SignalingConfig,
        host_key: str,
        on_viewers_changed: Callable[[int], None],
    ) -> None:
        self._config = config
        self._host_key = host_key.encode("utf-8")
        self._on_viewers_changed = on_viewers_changed
        self._rooms: dict[str, _Room] = {}
        self._clients: dict[str, _Client] = {}
        self._viewer_count = 0
        self._closing = trio.Event()
        self._handlers_scope: trio.CancelScope | None = None
        self._dispatch = {
            "join": self._on_join,
            "offer": self._on_offer,
            "answer": self._on_answer,
        }

    # -- lifecycle -------------------------------------------------------------

    async def own_handlers(
        self, *, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own every connection's tasks, shielded from the caller's cancellation.

        Shielding lets each connection finish a proper closing handshake
        (code 1001) after the service is cancelled; ``shut_down`` sets the
        deadline that bounds how long that may take.
        """
        with trio.CancelScope(shield=True) as self._handlers_scope:
            async with trio.open_nursery() as handlers:
                task_status.started(handlers)
                await self._closing.wait()

    def shut_down(self) -> None:
        """Close every connection with 1001 and let the handler nursery finish."""
        if self._closing.is_set():
            return
        log.info("shutting down: closing %d connection(s)", len(self._clients))
        self._closing.set()
        for client in list(self._clients.values()):
            client.close(CLOSE_GOING_AWAY, "server shutting down")
        if self._handlers_scope is not None:
            self._handlers_scope.deadline = trio.current_time() + 2 * self._grace_s

    @property
    def _grace_s(self) -> float:
        return self._config.close_timeout_s

    # -- one connection --------------------------------------------------------

    async def handle(self, request: trio_websocket.WebSocketRequest) -> None:
        """Serve one connection until it closes; never raises for client faults."""
        try:
            websocket = await request.accept()
        except trio_websocket.ConnectionClosed:
            return
        outbox, outbox_out = trio.open_memory_channel[str](self._config.outbox_messages)
        with trio.CancelScope() as scope:
            client = _Client(self._new_id(), websocket, outbox, scope, self._grace_s)
            self._clients[client.id] = client
            peer = websocket.remote
            log.info("%s connected from %s:%s", client.id, peer.address, peer.port)
            try:
                await self._serve(client, outbox_out)
            finally:
                self._leave(client)
                del self._clients[client.id]
        reason = websocket.closed
        log.info("%s closed (code %s)", client.id, reason.code if reason else "none")

    async def _serve(
        self, client: _Client, outbox_out: trio.MemoryReceiveChannel[str]
    ) -> None:
        if self._closing.is_set():
            client.close(CLOSE_GOING_AWAY, "server shutting down")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_loop, client, outbox_out)
            await self._read_loop(client)

            # The peer is gone: let the writer drain what is left and exit.
            client.outbox.close()

    async def _read_loop(self, client: _Client) -> None:
        while True:
            try:
                message = await client.websocket.get_message()
            except trio_websocket.ConnectionClosed:
                return
            self._receive(client, message)

    async def _write_loop(
        self, client: _Client, outbox_out: trio.MemoryReceiveChannel[str]
    ) -> None:
        try:
            async for text in outbox_out:
                await client.websocket.send_message(text)
            if client.close_request is not None:
                await client.websocket.aclose(*client.close_request)
        except trio_websocket.ConnectionClosed:
            pass

    def _new_id(self) -> str:
        while True:
            candidate = secrets.token_hex(3)
            if candidate not in self._clients:
                return candidate

    # -- messages --------------------------------------------------------------

    def _receive(self, client: _Client, raw: str | bytes) -> None:
        message_type = None
        try:
            message = _decode(raw)
            message_type = message["type"]
            handler = self._dispatch.get(message_type)
            if handler is None:
                raise SignalingError("unknown_type", f"unknown type {message_type!r}")
            handler(client, message)
        except SignalingError as error:
            log.info("%s refused %s: %s", client.id, message_type or "message", error)
            reply = {"type": "error", "code": error.code, "message": error.message}
            if message_type is not None:
                reply["in_reply_to"] = message_type
            client.send(reply)

    def _on_join(self, client: _Client, message: dict[str, Any]) -> None:
        if client.role is not None:
            raise SignalingError("already_joined", "this connection already joined")
        role = _role(message)
        room_name = _room_name(message, self._config.default_room)
        if room_name not in self._rooms and len(self._rooms) >= self._config.max_rooms:
            raise SignalingError("too_many_rooms", "no more rooms can be opened")

        if role is Role.PUBLISHER:
            self._check_host_key(message)
            room = self._rooms.get(room_name)
            if room is not None and room.publisher is not None:
                raise SignalingError(
                    "publisher_exists", f"room {room_name!r} already has a publisher"
                )
            self._join_publisher(client, self._room(room_name))
        else:
            if self._viewer_count >= self._config.max_viewers:
                raise SignalingError("server_full", "too many viewers; try later")
            self._join_viewer(client, self._room(room_name))

    def _join_publisher(self, client: _Client, room: _Room) -> None:
        client.role, client.room = Role.PUBLISHER, room
        room.publisher = client
        log.info("%s publishes in room %s", client.id, room.name)
        client.send(
            {"type": "joined", "role": "publisher", "room": room.name, "id": client.id}
        )

        # Viewers who were waiting are announced as if they had just joined.
        for viewer in room.viewers.values():
            viewer.send({"type": "host_joined"})
            client.send({"type": "viewer_joined", "viewer": viewer.id})

    def _join_viewer(self, client: _Client, room: _Room) -> None:
        client.role, client.room = Role.VIEWER, room
        room.viewers[client.id] = client
        log.info("%s watches room %s", client.id, room.name)
        client.send(
            {
                "type": "joined",
                "role": "viewer",
                "room": room.name,
                "id": client.id,
                "host_present": room.publisher is not None,
            }
        )
        if room.publisher is not None:
            room.publisher.send({"type": "viewer_joined", "viewer": client.id})
        self._viewers_changed(+1)

    def _on_offer(self, client: _Client, message: dict[str, Any]) -> None:
        self._require(client, Role.PUBLISHER)
        viewer_id = _string_field(message, "viewer", 64)
        sdp = _sdp_field(message, self._config.max_sdp_bytes)
        assert client.room is not None
        viewer = client.room.viewers.get(viewer_id)
        if viewer is None:
            raise SignalingError("unknown_viewer", f"no viewer {viewer_id!r} here")

        viewer.awaiting_answer = True
        viewer.send({"type": "offer", "sdp": sdp})
        log.debug("%s offered to %s", client.id, viewer_id)

    def _on_answer(self, client: _Client, message: dict[str, Any]) -> None:
        self._require(client, Role.VIEWER)
        sdp = _sdp_field(message, self._config.max_sdp_bytes)
        assert client.room is not None
        publisher = client.room.publisher
        if publisher is None or not client.awaiting_answer:
            raise SignalingError("no_offer", "there is no offer to answer")

        client.awaiting_answer = False
        publisher.send({"type": "answer", "viewer": client.id, "sdp": sdp})
        log.debug("%s answered %s", client.id, publisher.id)

    def _leave(self, client: _Client) -> None:
        room = client.room
        if room is None:
            return
        if client.role is Role.PUBLISHER:
            room.publisher = None
            log.info("%s stopped publishing in room %s", client.id, room.name)
            for viewer in room.viewers.values():
                viewer.awaiting_answer = False
                viewer.send({"type": "host_left"})
        else:
            del room.viewers[client.id]
            log.info("%s left room %s", client.id, room.name)
            if room.publisher is not None:
                room.publisher.send({"type": "viewer_left", "viewer": client.id})
            self._viewers_changed(-1)
        if room.is_empty():
            del self._rooms[room.name]

    # -- helpers ---------------------------------------------------------------

    def _room(self, name: str) -> _Room:
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = _Room(name)
        return room

    def _require(self, client: _Client, role: Role) -> None:
        if client.role is None:
            raise SignalingError("not_joined", "send join first")
        if client.role is not role:
            raise SignalingError(
                f"not_{role.value}", f"only a {role.value} may send this"
            )

    def _check_host_key(self, message: dict[str, Any]) -> None:
        offered = message.get("host_key")
        if not isinstance(offered, str) or not hmac.compare_digest(
            offered.encode("utf-8"), self._host_key
        ):
            raise SignalingError("bad_host_key", "the host key is wrong")

    def _viewers_changed(self, delta: int) -> None:
        self._viewer_count += delta

        # The callback belongs to another service; its failure must not take a
        # viewer's connection (or this service) down with it.
        try:
            self._on_viewers_changed(self._viewer_count)
        except Exception:
            log.exception("on_viewers_changed(%d) failed", self._viewer_count)


def _decode(raw: str | bytes) -> dict[str, Any]:
    if isinstance(raw, bytes):
        raise SignalingError("bad_json", "send JSON in text messages, not binary")
    try:
        message = json.loads(raw)
    except ValueError as error:
        raise SignalingError("bad_json", f"not JSON: {error}") from None
    if not isinstance(message, dict):
        raise SignalingError("bad_json", "a message must be a JSON object")
    if not isinstance(message.get("type"), str):
        raise SignalingError("bad_message", "a message needs a string 'type'")
    return message


def _role(message: dict[str, Any]) -> Role:
    try:
        return Role(message.get("role"))
    except ValueError:
        raise SignalingError(
            "bad_message", "'role' must be 'publisher' or 'viewer'"
        ) from None


def _room_name(message: dict[str, Any], default: str) -> str:
    name = message.get("room", default)
    if not isinstance(name, str) or not ROOM_NAME.fullmatch(name):
        raise SignalingError("bad_room", "'room' must be 1-64 of A-Z a-z 0-9 _ -")
    return name


def _string_field(message: dict[str, Any], name: str, max_chars: int) -> str:
    value = message.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_chars:
        raise SignalingError("bad_message", f"{name!r} must be a string")
    return value


def _sdp_field(message: dict[str, Any], max_bytes: int) -> str:
    sdp = message.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise SignalingError("bad_message", "'sdp' must be a session description")
    if len(sdp.encode("utf-8")) > max_bytes:
        raise SignalingError("sdp_too_large", f"'sdp' is over {max_bytes} bytes")
    return sdp


async def serve_signaling(
    config: SignalingConfig,
    *,
    ssl_context: ssl.SSLContext | None,
    host_key: str,
    on_viewers_changed: Callable[[int], None] = lambda n: None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve signaling on ``config.bind``:``config.port`` until cancelled.

    Calls ``task_status.started(port)`` once listening (``port`` is the real
    one when ``config.port`` is 0). ``on_viewers_changed(n)`` is called with the
    number of viewers in all rooms whenever it changes; it must not block.

    On cancellation the listener stops, every connection is closed with code
    1001 ("going away"), and this returns within about ``2 * close_timeout_s``
    even if clients do not answer the closing handshake.
    """
    service = _SignalingService(config, host_key, on_viewers_changed)
    async with trio.open_nursery() as nursery:
        handlers = await nursery.start(service.own_handlers)
        try:
            server = await nursery.start(
                partial(
                    trio_websocket.serve_websocket,
                    service.handle,
                    config.bind,
                    config.port,
                    ssl_context,
                    handler_nursery=handlers,
                    max_message_size=config.max_message_bytes,
                    connect_timeout=config.handshake_timeout_s,
                    disconnect_timeout=config.close_timeout_s,
                )
            )
            log.info("signaling listening on %s:%d", config.bind, server.port)
            task_status.started(server.port)
            await trio.sleep_forever()
        finally:
            service.shut_down()
