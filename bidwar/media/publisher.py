"""What a host does: capture, stamp, encode once, and serve every viewer.

One capture loop reads the camera at the configured rate, stamps the
capture time into the picture, encodes it once and publishes the packets to
the ``Broadcast``. Each viewer the signaling service announces gets its own
task, which owns that viewer's peer connection and subscription: it offers,
waits for the answer, and then waits until the viewer leaves (cancelled on
``viewer_left``) or the connection fails.

When the signaling connection is lost (the server restarted), every viewer
task ends with it, closing its peer connection, while capture and encoding
carry on; once joined again the service announces each viewer afresh.

Task tree (every task has an owner; cancelling ``run`` tears all down)::

    Publisher.run
      ├─ trio-asyncio loop (open_bridge)
      ├─ stay_joined: one signaling connection at a time, and its message loop
      │    └─ one task per viewer ── its RTCPeerConnection
      ├─ capture loop
      └─ report loop (optional)
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import av
import trio

from bidwar.media.bridge import MediaError, open_bridge, open_sender
from bidwar.media.broadcast import Broadcast, Subscription, SubscriptionStats
from bidwar.media.camera import FrameSource
from bidwar.media.encoder import EncoderConfig, VideoEncoder
from bidwar.media.errors import single_errors
from bidwar.media.signaling_client import (
    SignalingChannel,
    SignalingError,
    open_signaling,
    stay_joined,
)
from bidwar.media.stamp import stamp

log = logging.getLogger("bidwar.host")

RTP_CLOCK_HZ = 90_000
VIEWER_ATTEMPTS = 3
RETRY_DELAY_S = 1.0


@dataclass(frozen=True)
class PublisherConfig:
    signaling_url: str
    host_key: str
    room: str = "main"
    width: int = 640
    height: int = 480
    fps: int = 30
    bitrate_bps: int = 1_000_000
    keyframe_interval_s: float = 1.0
    viewer_queue_frames: int = 8
    answer_timeout_s: float = 10.0
    report_interval_s: float | None = None


@dataclass
class PublisherStats:
    frames_captured: int = 0
    frames_encoded: int = 0
    keyframes: int = 0
    viewers: int = 0
    viewers_served: int = 0
    packets_dropped: int = 0


@dataclass(eq=False)
class _ViewerLink:
    subscription: Subscription[av.Packet] | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    answers: tuple[trio.MemorySendChannel[str], trio.MemoryReceiveChannel[str]] = field(
        default_factory=lambda: trio.open_memory_channel[str](1)
    )


def _drain(channel: trio.MemoryReceiveChannel[str]) -> None:
    # An answer to an earlier, abandoned offer must not answer the next one.
    while True:
        try:
            channel.receive_nowait()
        except trio.WouldBlock:
            return


class Publisher:
    """Publishes one camera to a signaling room."""

    def __init__(
        self,
        config: PublisherConfig,
        camera: FrameSource,
        *,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.config = config
        self._camera = camera
        self._ssl_context = ssl_context
        self._encoder = VideoEncoder(
            EncoderConfig(
                width=config.width,
                height=config.height,
                fps=config.fps,
                bitrate_bps=config.bitrate_bps,
                keyframe_interval_s=config.keyframe_interval_s,
            )
        )
        self._broadcast: Broadcast[av.Packet] = Broadcast(
            queue_frames=config.viewer_queue_frames
        )
        self._links: dict[str, _ViewerLink] = {}
        self._frames_captured = 0
        self._viewers_served = 0
        self._dropped_by_gone_viewers = 0

    def viewer_statistics(self) -> dict[str, SubscriptionStats]:
        """Per connected viewer: packets queued for and taken by its sender, drops."""
        return {
            viewer_id: link.subscription.stats
            for viewer_id, link in self._links.items()
        }

    def statistics(self) -> PublisherStats:
        return PublisherStats(
            frames_captured=self._frames_captured,
            frames_encoded=self._encoder.frames_encoded,
            keyframes=self._encoder.keyframes,
            viewers=len(self._links),
            viewers_served=self._viewers_served,
            packets_dropped=self._dropped_by_gone_viewers,
        )

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ):
        """Publish until cancelled; ``task_status.started()`` once joined.

        Raises SignalingRejected (e.g. a wrong host key), also when joining
        again, and SignalingError if the first join fails or the service
        closes the connection for a reason other than going away. A lost
        connection is joined again (see ``stay_joined``) without stopping the
        camera. On return or cancellation every peer connection has been
        closed.
        """
        with single_errors():
            await self._run(task_status)

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        config = self.config
        join = partial(
            open_signaling,
            config.signaling_url,
            ssl_context=self._ssl_context,
            role="publisher",
            room=config.room,
            host_key=config.host_key,
        )
        async with open_bridge(), trio.open_nursery() as nursery:
            await nursery.start(stay_joined, join, self._serve_signaling)
            nursery.start_soon(self._capture_loop)
            if config.report_interval_s:
                nursery.start_soon(self._report_loop, config.report_interval_s)
            task_status.started()

    # -- signaling ---------------------------------------------------------------

    async def _serve_signaling(self, channel: SignalingChannel) -> None:
        # The viewers' tasks live only as long as this connection: when it
        # is lost they are cancelled and close their peer connections.
        async with trio.open_nursery() as nursery:
            async for message in channel:
                self._on_message(nursery, channel, message)

    def _on_message(
        self, nursery: trio.Nursery, channel: SignalingChannel, message: dict[str, Any]
    ) -> None:
        kind = message.get("type")
        if kind == "viewer_joined":
            self._start_viewer(nursery, channel, message["viewer"])
        elif kind == "viewer_left":
            link = self._links.get(message["viewer"])
            if link is not None:
                link.scope.cancel()
        elif kind == "answer":
            self._deliver_answer(message["viewer"], message["sdp"])
        elif kind == "error":
            # e.g. unknown_viewer: the viewer left while we were offering.
            log.info("signaling refused %s: %s", message.get("in_reply_to"), message)

    def _start_viewer(
        self, nursery: trio.Nursery, channel: SignalingChannel, viewer_id: str
    ) -> None:
        old = self._links.pop(viewer_id, None)
        if old is not None:
            old.scope.cancel()
        link = self._links[viewer_id] = _ViewerLink()
        nursery.start_soon(self._serve_viewer, channel, viewer_id, link)

    def _deliver_answer(self, viewer_id: str, sdp: str) -> None:
        link = self._links.get(viewer_id)
        try:
            if link is None:
                raise trio.WouldBlock
            link.answers[0].send_nowait(sdp)
        except trio.WouldBlock:
            log.info("%s: ignoring an answer nobody is waiting for", viewer_id)

    # -- one viewer --------------------------------------------------------------

    async def _serve_viewer(
        self, channel: SignalingChannel, viewer_id: str, link: _ViewerLink
    ) -> None:
        self._viewers_served += 1
        log.info("%s: connecting (%d viewers)", viewer_id, len(self._links))
        try:
            with link.scope:
                await self._keep_viewer_connected(channel, viewer_id, link)
        finally:
            if self._links.get(viewer_id) is link:
                del self._links[viewer_id]
            log.info("%s: gone", viewer_id)

    async def _keep_viewer_connected(
        self, channel: SignalingChannel, viewer_id: str, link: _ViewerLink
    ) -> None:
        # A viewer still in the room whose connection failed (ICE consent
        # lost, a wedged DTLS handshake) gets a fresh offer, a few times.
        for attempt in range(1, VIEWER_ATTEMPTS + 1):
            try:
                await self._connect_viewer(channel, viewer_id, link)
                problem = "the peer connection ended"
            except (MediaError, trio.TooSlowError) as error:
                problem = str(error) or type(error).__name__
            except SignalingError as error:
                log.warning("%s: signaling failed: %s", viewer_id, error)
                return

            # A viewer that simply left also ends its connection; its
            # viewer_left usually follows at once and cancels this wait.
            await trio.sleep(RETRY_DELAY_S)
            if attempt == VIEWER_ATTEMPTS:
                log.warning("%s: %s; giving up", viewer_id, problem)
                return
            log.warning("%s: %s; offering again", viewer_id, problem)

    async def _connect_viewer(
        self, channel: SignalingChannel, viewer_id: str, link: _ViewerLink
    ) -> None:
        link.subscription = subscription = self._broadcast.subscribe(viewer_id)
        _drain(link.answers[1])
        try:
            async with open_sender(
                subscription.receive, self._broadcast.request_keyframe
            ) as peer:
                offer = await peer.create_offer()
                await channel.send({"type": "offer", "viewer": viewer_id, "sdp": offer})
                with trio.fail_after(self.config.answer_timeout_s):
                    answer = await link.answers[1].receive()
                await peer.accept_answer(answer)
                await peer.wait_connected()
                log.info("%s: connected", viewer_id)
                await peer.wait_ended()
        finally:
            subscription.close()
            self._dropped_by_gone_viewers += subscription.stats.dropped_full
            log.info(
                "%s: sent %d frames (%d dropped for a full queue)",
                viewer_id,
                subscription.stats.delivered,
                subscription.stats.dropped_full,
            )

    # -- capture -----------------------------------------------------------------

    async def _capture_loop(self) -> None:
        period_s = 1 / self.config.fps
        started_at = trio.current_time()
        deadline = started_at
        while True:
            await trio.sleep_until(deadline)
            await self._capture_one(started_at)

            # Fell more than a frame behind (a slow camera or a busy CPU):
            # skip ahead instead of bursting to catch up.
            deadline += period_s
            now = trio.current_time()
            if deadline < now - period_s:
                deadline = now

    async def _capture_one(self, started_at: float) -> None:
        if self._camera.blocking:
            image = await trio.to_thread.run_sync(self._camera.read)
        else:
            image = self._camera.read()
        stamp(image, time.time_ns() // 1_000_000)
        self._frames_captured += 1

        # Nobody is receiving yet: don't spend CPU encoding. A viewer's
        # first pull asks for a keyframe, so the next encode starts clean.
        if self._broadcast.receiving_count == 0:
            return

        now = trio.current_time()
        pts = round((now - started_at) * RTP_CLOCK_HZ)
        keyframe = self._broadcast.keyframe_wanted(now)
        packets = await trio.to_thread.run_sync(
            self._encoder.encode, image, pts, keyframe
        )
        for packet in packets:
            self._broadcast.publish(packet, packet.is_keyframe, now)

    async def _report_loop(self, interval_s: float) -> None:
        previous = self.statistics()
        while True:
            await trio.sleep(interval_s)
            current = self.statistics()
            fps = (current.frames_encoded - previous.frames_encoded) / interval_s
            log.info(
                "%d viewer(s), encoding %.1f fps, %d keyframes, %d packets dropped",
                current.viewers,
                fps,
                current.keyframes,
                current.packets_dropped,
            )
            previous = current
