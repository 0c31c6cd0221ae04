"""What a viewer does: join a room, answer the host's offer, take the frames.

The signaling message loop owns at most one *session* (one peer connection)
at a time. An ``offer`` starts a session, replacing any previous one;
``host_left`` ends it and the viewer waits for the next host. Each decoded
frame has its capture stamp read (glass-to-glass latency), and is optionally
recorded and shown.

A lost signaling connection (the server restarted) ends the session with
it; the viewer joins again, and the host's next offer starts a new session.
The figures and the recording carry on across the gap.

Task tree::

    Watcher.run
      ├─ trio-asyncio loop (open_bridge)
      ├─ stay_joined: one signaling connection at a time, and its message loop
      │    └─ current session ── its RTCPeerConnection ── frame pump
      └─ report loop (optional)
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np
import trio

from bidwar.media.bridge import MediaError, PeerClosed, open_bridge, open_receiver
from bidwar.media.display import Display
from bidwar.media.errors import single_errors
from bidwar.media.recorder import Recorder
from bidwar.media.signaling_client import (
    SignalingChannel,
    open_signaling,
    stay_joined,
)
from bidwar.media.stamp import read_stamp
from bidwar.media.viewer_stats import ViewerStats

log = logging.getLogger("bidwar.viewer")


@dataclass(frozen=True)
class WatcherConfig:
    signaling_url: str
    room: str = "main"
    frames: int | None = None
    record: Path | None = None
    display: bool = False
    report_interval_s: float | None = None


class Watcher:
    """Watches one room until cancelled or ``config.frames`` frames arrived."""

    def __init__(
        self,
        config: WatcherConfig,
        *,
        ssl_context: ssl.SSLContext | None,
        on_report: Callable[[ViewerStats], None] = lambda stats: None,
    ) -> None:
        self.config = config
        self.stats = ViewerStats()
        self.host_present = False
        self._ssl_context = ssl_context
        self._on_report = on_report
        self._session: trio.CancelScope | None = None
        self._done: trio.CancelScope | None = None
        self._recorder: Recorder | None = None
        self._display: Display | None = None
        self._started_at = time.monotonic()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> ViewerStats:
        """Watch; ``task_status.started()`` once joined. Returns the figures.

        Returns normally after ``config.frames`` frames or when the user
        closes the window. A lost signaling connection is joined again (see
        ``stay_joined``); raises SignalingError if the first join fails, the
        service refuses a join, or it closes the connection for another
        reason. Cancellation closes the peer connection and finishes the recording.
        """
        try:
            with single_errors(), trio.CancelScope() as self._done:
                await self._run(task_status)
        finally:
            await self._finish_outputs()
        return self.stats

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        config = self.config
        join = partial(
            open_signaling,
            config.signaling_url,
            ssl_context=self._ssl_context,
            role="viewer",
            room=config.room,
        )
        async with open_bridge(), trio.open_nursery() as nursery:
            await nursery.start(stay_joined, join, self._serve_signaling)
            if config.report_interval_s:
                nursery.start_soon(self._report_loop, config.report_interval_s)
            task_status.started()

    async def _serve_signaling(self, channel: SignalingChannel) -> None:
        self.host_present = channel.host_present
        if channel.host_present:
            self.stats.expect_video(time.monotonic())
        else:
            log.info("waiting for the host")

        # The session lives only as long as this connection: when it is lost
        # the session is cancelled and closes its peer connection.
        try:
            async with trio.open_nursery() as nursery:
                async for message in channel:
                    await self._on_message(nursery, channel, message)
        finally:
            self._session = None

    async def _on_message(
        self, nursery: trio.Nursery, channel: SignalingChannel, message: dict[str, Any]
    ) -> None:
        kind = message.get("type")
        if kind == "offer":
            await self._start_session(nursery, channel, message["sdp"])
        elif kind == "host_joined":
            log.info("the host arrived")
            self.host_present = True
            self.stats.expect_video(time.monotonic())
        elif kind == "host_left":
            log.info("the host left; waiting for the next one")
            self.host_present = False
            self._end_session()
        elif kind == "error":
            log.warning("signaling refused %s: %s", message.get("in_reply_to"), message)

    async def _start_session(
        self, nursery: trio.Nursery, channel: SignalingChannel, sdp: str
    ) -> None:
        self._end_session()
        try:
            self._session, answer = await nursery.start(self._run_session, sdp)
        except MediaError as error:
            log.warning("cannot use the host's offer: %s", error)
            return
        await channel.send({"type": "answer", "sdp": answer})

    def _end_session(self) -> None:
        if self._session is not None:
            self._session.cancel()
            self._session = None

    async def _run_session(self, sdp: str, *, task_status: Any) -> None:
        with trio.CancelScope() as scope:
            async with open_receiver() as peer:
                answer = await peer.accept_offer(sdp)
                task_status.started((scope, answer))
                try:
                    while True:
                        await self._on_frame(await peer.receive_frame())
                except PeerClosed:
                    log.info("the video ended")

    # -- frames ------------------------------------------------------------------

    async def _on_frame(self, frame: av.VideoFrame) -> None:
        now_ms = time.time_ns() // 1_000_000
        captured_ms = read_stamp(_luma(frame), now_ms)
        latency = None if captured_ms is None else float(now_ms - captured_ms)
        first = self.stats.frames == 0
        self.stats.add_frame(time.monotonic(), frame.width, frame.height, latency)
        if first:
            log.info("first frame: %dx%d", frame.width, frame.height)

        await self._record(frame)
        if self.config.display and not self._show(frame):
            self._stop()
        if self.config.frames is not None and self.stats.frames >= self.config.frames:
            self._stop()

    async def _record(self, frame: av.VideoFrame) -> None:
        if self.config.record is None:
            return
        if self._recorder is None:
            self._recorder = Recorder(self.config.record)
        at_ms = round((time.monotonic() - self._started_at) * 1000)
        await trio.to_thread.run_sync(self._recorder.write, frame, at_ms)

    def _show(self, frame: av.VideoFrame) -> bool:
        # HighGUI wants a single thread, so the window is driven from the trio
        # thread; imshow plus a 1 ms waitKey is cheap next to a frame period.
        if self._display is None:
            self._display = Display()
        return self._display.show(frame)

    def _stop(self) -> None:
        if self._done is not None:
            self._done.cancel()

    async def _finish_outputs(self) -> None:
        if self._recorder is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._recorder.close)
            log.info(
                "recorded %d frames to %s", self._recorder.frames, self.config.record
            )
        if self._display is not None:
            self._display.close()

    async def _report_loop(self, interval_s: float) -> None:
        while True:
            await trio.sleep(interval_s)
            self._on_report(self.stats)


def _luma(frame: av.VideoFrame) -> np.ndarray:
    """The brightness plane of a decoded (planar YUV) frame, without copying."""
    if frame.format.name not in ("yuv420p", "yuvj420p", "nv12"):
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]
