"""The one place where asyncio lives: aiortc peer connections behind a trio API.

aiortc is an asyncio library. ``open_bridge`` runs an asyncio event loop on
top of trio (trio-asyncio) for as long as it is open; the peer classes here
cross into it with ``aio_as_trio`` (trio calling aiortc) and ``trio_as_aio``
(aiortc pulling packets from a trio queue). Nothing outside this module
imports asyncio or aiortc.

Sending pre-encoded video (what we learnt from aiortc 1.16's source)
--------------------------------------------------------------------
``RTCRtpSender._next_encoded_frame`` awaits ``track.recv()``. If that returns
an ``av.VideoFrame`` the sender encodes it with its *own* encoder, one per
viewer. If it returns an ``av.Packet`` it only calls ``encoder.pack(packet)``:
for H.264 that splits the Annex-B stream into NAL units and packetises them
(FU-A / STAP-A) with RTP time from ``packet.pts`` and ``packet.time_base``.
So a track whose ``recv`` hands out packets from one shared encoder gives
encode-once fan-out. Two consequences:

- the packets must be in the codec the transceiver negotiated, so we pin the
  transceiver to H.264 with ``setCodecPreferences``;
- keyframe requests (RTCP PLI / FIR from the viewer) only set a flag that the
  sender's own encoder would read; with packets nobody reads it. We replace
  the sender's ``_send_keyframe`` hook with our own callback so picture-loss
  reports reach the shared encoder. This relies on a private method and is
  checked by the video tests.

Lifetimes: each peer is an async context manager. Leaving it closes the
peer connection under a shielded scope with a deadline, so cancellation
(a viewer leaving, the host leaving, Ctrl-C) still releases its sockets and
the receiver's decoder thread.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aioice.ice
import av
import trio
import trio_asyncio
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

log = logging.getLogger("bidwar.media")

CLOSE_TIMEOUT_S = 5.0
FRAME_MAILBOX_SIZE = 2
_ENDED_STATES = frozenset({"failed", "closed"})


class MediaError(Exception):
    """Root of the media errors."""


class PeerClosed(MediaError):
    """The peer connection or its track ended."""


@asynccontextmanager
async def open_bridge() -> AsyncIterator[None]:
    """Run the asyncio loop that aiortc needs until the block exits.

    Open peers inside the block; leaving it waits for asyncio tasks to stop.
    """
    _allow_loopback_only_hosts()
    async with trio_asyncio.open_loop():
        yield


@asynccontextmanager
async def open_sender(
    next_packet: Callable[[], Awaitable[av.Packet]],
    on_keyframe_request: Callable[[], None],
) -> AsyncIterator[SendingPeer]:
    """A peer connection that sends the packets ``next_packet`` returns.

    ``next_packet`` is a trio async function; the sender calls it once per
    frame and stops when it raises ``trio.EndOfChannel``.
    ``on_keyframe_request`` is called (synchronously) when the viewer
    reports picture loss. Must be used inside ``open_bridge``.
    """
    connection = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        peer = SendingPeer(connection, next_packet, on_keyframe_request)
        yield peer
    finally:
        await _close(connection)


@asynccontextmanager
async def open_receiver() -> AsyncIterator[ReceivingPeer]:
    """A peer connection that answers an offer and yields decoded frames.

    Must be used inside ``open_bridge``.
    """
    connection = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        async with trio.open_nursery() as nursery:
            peer = ReceivingPeer(connection, nursery)
            yield peer
            nursery.cancel_scope.cancel()
    finally:
        await _close(connection)


class _PacketTrack(MediaStreamTrack):
    """An aiortc track whose ``recv`` returns encoded packets from trio."""

    kind = "video"

    def __init__(self, next_packet: Callable[[], Awaitable[av.Packet]]) -> None:
        super().__init__()
        self._next_packet = trio_asyncio.trio_as_aio(next_packet)

    async def recv(self) -> av.Packet:
        try:
            return await self._next_packet()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            self.stop()
            raise MediaStreamError from None


class _Peer:
    """What both directions share: state watching and description exchange."""

    def __init__(self, connection: RTCPeerConnection) -> None:
        self._connection = connection
        self._ended = trio.Event()
        self._connected = trio.Event()
        connection.on("connectionstatechange", self._on_state_change)

    def _on_state_change(self) -> None:
        # Runs as an asyncio callback, which trio-asyncio executes inside a
        # trio task, so setting trio events here is allowed.
        state = self._connection.connectionState
        log.debug("peer connection is %s", state)
        if state == "connected":
            self._connected.set()
        if state in _ENDED_STATES:
            self._ended.set()
            self._on_ended()

    def _on_ended(self) -> None:
        pass

    async def wait_connected(self) -> None:
        """Return once media can flow; raise PeerClosed if it never will."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_set_after, self._ended.wait, nursery.cancel_scope)
            await self._connected.wait()
            nursery.cancel_scope.cancel()
        if not self._connected.is_set():
            raise PeerClosed("the peer connection failed before connecting")

    async def wait_ended(self) -> None:
        """Return when the connection has failed or closed."""
        await self._ended.wait()

    @property
    def state(self) -> str:
        return str(self._connection.connectionState)

    async def _call(self, method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await trio_asyncio.aio_as_trio(method)(*args)


class SendingPeer(_Peer):
    """The host's connection to one viewer; send-only, H.264 only."""

    def __init__(
        self,
        connection: RTCPeerConnection,
        next_packet: Callable[[], Awaitable[av.Packet]],
        on_keyframe_request: Callable[[], None],
    ) -> None:
        super().__init__(connection)
        transceiver = connection.addTransceiver(
            _PacketTrack(next_packet), direction="sendonly"
        )
        transceiver.setCodecPreferences(_h264_capabilities())

        # aiortc only forwards PLI/FIR to its own per-sender encoder; route
        # them to the shared one instead (see the module docstring).
        transceiver.sender._send_keyframe = on_keyframe_request

    async def create_offer(self) -> str:
        """Return a complete offer (every ICE candidate gathered)."""
        offer = await self._call(self._connection.createOffer)
        await self._call(self._connection.setLocalDescription, offer)
        return str(self._connection.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        """Apply the viewer's answer; media starts once ICE and DTLS finish."""
        answer = RTCSessionDescription(sdp=sdp, type="answer")
        try:
            await self._call(self._connection.setRemoteDescription, answer)
        except ValueError as error:
            raise MediaError(f"unusable answer: {error}") from error


class ReceivingPeer(_Peer):
    """A viewer's connection to the host; receive-only."""

    def __init__(self, connection: RTCPeerConnection, nursery: trio.Nursery) -> None:
        super().__init__(connection)
        self._nursery = nursery
        self._mailbox = _FrameMailbox(FRAME_MAILBOX_SIZE)

    async def accept_offer(self, sdp: str) -> str:
        """Apply the host's offer and return our complete answer."""
        offer = RTCSessionDescription(sdp=sdp, type="offer")
        try:
            await self._call(self._connection.setRemoteDescription, offer)
        except ValueError as error:
            raise MediaError(f"unusable offer: {error}") from error
        answer = await self._call(self._connection.createAnswer)
        await self._call(self._connection.setLocalDescription, answer)

        track = self._video_track()
        self._nursery.start_soon(self._pump_frames, track)
        return str(self._connection.localDescription.sdp)

    async def receive_frame(self) -> av.VideoFrame:
        """Return the newest decoded frame; raise PeerClosed when video ends.

        If the caller falls behind, older frames are dropped (``dropped``
        counts them) so that what it shows stays current.
        """
        return await self._mailbox.get()

    @property
    def dropped(self) -> int:
        return self._mailbox.dropped

    def _on_ended(self) -> None:
        # A failed connection may never end its track; end the frames anyway.
        self._mailbox.close()

    def _video_track(self) -> MediaStreamTrack:
        for transceiver in self._connection.getTransceivers():
            if transceiver.kind == "video":
                return transceiver.receiver.track
        raise MediaError("the offer has no video")

    async def _pump_frames(self, track: MediaStreamTrack) -> None:
        # Drain aiortc's queue (unbounded) into our bounded mailbox as fast
        # as frames are decoded, so a slow consumer sees drops, not delay.
        receive = trio_asyncio.aio_as_trio(track.recv)
        try:
            while True:
                self._mailbox.put(await receive())
        except MediaStreamError:
            pass
        finally:
            self._mailbox.close()


class _FrameMailbox:
    """Keeps the newest ``capacity`` frames; a put never waits."""

    def __init__(self, capacity: int) -> None:
        self._frames: deque[av.VideoFrame] = deque(maxlen=capacity)
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self.dropped = 0

    def put(self, frame: av.VideoFrame) -> None:
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(frame)
        self._lot.unpark_all()

    async def get(self) -> av.VideoFrame:
        while not self._frames:
            if self._closed:
                raise PeerClosed("the video track ended")
            await self._lot.park()
        return self._frames.popleft()

    def close(self) -> None:
        self._closed = True
        self._lot.unpark_all()


async def _set_after(wait: Callable[[], Awaitable[None]], scope: trio.CancelScope):
    await wait()
    scope.cancel()


async def _close(connection: RTCPeerConnection) -> None:
    # Shielded so that cancellation (the usual way a peer ends) still frees
    # the sockets and threads; the deadline keeps a wedged close from hanging
    # shutdown.
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S) as scope:
        await trio_asyncio.aio_as_trio(connection.close)()
    if scope.cancelled_caught:
        log.warning("a peer connection did not close within %.0f s", CLOSE_TIMEOUT_S)


def _h264_capabilities() -> list[Any]:
    codecs = RTCRtpSender.getCapabilities("video").codecs
    return [c for c in codecs if c.mimeType in ("video/H264", "video/rtx")]


def _allow_loopback_only_hosts() -> None:
    # aioice never offers loopback addresses as ICE candidates. On a machine
    # whose only interface is loopback (a container, a CI sandbox) that means
    # no candidates at all, so fall back to 127.0.0.1 there and only there.
    original = aioice.ice.get_host_addresses
    if getattr(original, "_bidwar_patched", False):
        return

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = original(use_ipv4, use_ipv6)
        return addresses or (["127.0.0.1"] if use_ipv4 else [])

    host_addresses._bidwar_patched = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = host_addresses
