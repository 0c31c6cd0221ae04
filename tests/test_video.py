"""Live video end to end: a fake-camera host and viewers over real signaling.

Media needs real time (ICE, DTLS, a 30 fps camera), so these tests wait on
the wall clock, but only in short polls for conditions, each bounded by a
generous ``fail_after``. Thresholds are loose on purpose (a shared 2-core
machine): they catch "broken" and "encodes per viewer", not small slowdowns.
"""

import gc
import os
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import av
import psutil
import pytest
import trio
import trio.testing
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

from bidwar.media import bridge
from bidwar.media.broadcast import Broadcast
from bidwar.media.camera import FakeCamera
from bidwar.media.encoder import EncoderConfig, VideoEncoder
from bidwar.media.publisher import Publisher, PublisherConfig
from bidwar.media.stamp import read_stamp, stamp
from bidwar.media.watcher import Watcher, WatcherConfig
from bidwar.signaling import SignalingConfig, serve_signaling

pytestmark = pytest.mark.slow

HOST_KEY = "sesame"
SIZE = (160, 128)
FPS = 30
POLL_S = 0.02


@dataclass
class Room:
    url: str
    client_ssl: ssl.SSLContext
    nursery: trio.Nursery

    async def start_host(self) -> tuple[Publisher, trio.CancelScope]:
        # A one-second viewer queue: on a busy test machine the senders can
        # stall past the default 8 frames, and the drop policy has its own
        # deterministic tests below.
        config = PublisherConfig(
            self.url,
            HOST_KEY,
            width=SIZE[0],
            height=SIZE[1],
            fps=FPS,
            viewer_queue_frames=FPS,
        )
        publisher = Publisher(config, FakeCamera(SIZE), ssl_context=self.client_ssl)
        scope = await self.nursery.start(_cancellable, publisher.run)
        return publisher, scope

    async def start_viewer(
        self, frames: int | None = None
    ) -> tuple[Watcher, trio.CancelScope]:
        watcher = Watcher(
            WatcherConfig(self.url, frames=frames), ssl_context=self.client_ssl
        )
        scope = await self.nursery.start(_cancellable, watcher.run)
        return watcher, scope


async def _cancellable(run: Callable, *, task_status: trio.TaskStatus) -> None:
    with trio.CancelScope() as scope:
        await run(task_status=_Forward(task_status, scope))


@dataclass
class _Forward:
    """Reports the caller's cancel scope instead of the child's started value."""

    status: trio.TaskStatus
    scope: trio.CancelScope

    def started(self, value: object = None) -> None:
        self.status.started(self.scope)


@asynccontextmanager
async def open_room(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> AsyncIterator[Room]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            partial(
                serve_signaling,
                SignalingConfig(port=0),
                ssl_context=server_ssl,
                host_key=HOST_KEY,
            )
        )
        yield Room(f"wss://127.0.0.1:{port}/", client_ssl, nursery)
        nursery.cancel_scope.cancel()


async def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(POLL_S)


# -- the parts, deterministically ---------------------------------------------


async def test_a_new_subscriber_asks_for_a_keyframe_and_starts_on_one() -> None:
    broadcast: Broadcast[str] = Broadcast(queue_frames=4)
    subscription = broadcast.subscribe("v1")
    assert not broadcast.keyframe_wanted(now=10.0), "not pulling yet"

    async with trio.open_nursery() as nursery:
        received: list[str] = []

        async def pull() -> None:
            received.append(await subscription.receive())

        nursery.start_soon(pull)
        await trio.testing.wait_all_tasks_blocked()
        assert broadcast.keyframe_wanted(now=10.0)

        broadcast.publish("delta", is_keyframe=False, now=10.0)
        broadcast.publish("key", is_keyframe=True, now=10.0)
    assert received == ["key"]
    assert not broadcast.keyframe_wanted(now=10.1)
    assert subscription.stats.dropped_waiting == 1


async def test_a_full_queue_skips_to_the_next_keyframe_without_touching_others() -> (
    None
):
    broadcast: Broadcast[str] = Broadcast(queue_frames=2)
    slow, fast = broadcast.subscribe("slow"), broadcast.subscribe("fast")
    for subscription in (slow, fast):
        subscription._active = True  # as after its sender's first receive
    broadcast.publish("k0", is_keyframe=True, now=0.0)
    assert await fast.receive() == "k0"

    for n in range(1, 4):
        broadcast.publish(f"d{n}", is_keyframe=False, now=n / 30)
        assert await fast.receive() == f"d{n}"

    # slow holds k0, d1; d2 overflowed, so d3 is skipped too (it depends on d2)
    assert slow.stats.dropped_full == 1
    assert slow.stats.dropped_waiting == 1
    assert broadcast.keyframe_wanted(now=1.0)
    assert [await slow.receive(), await slow.receive()] == ["k0", "d1"]

    broadcast.publish("k1", is_keyframe=True, now=1.0)
    assert await slow.receive() == "k1"
    assert await fast.receive() == "k1"


def test_keyframe_requests_are_coalesced_and_spaced() -> None:
    broadcast: Broadcast[str] = Broadcast(min_keyframe_gap_s=0.25)
    broadcast.publish("k0", is_keyframe=True, now=1.0)
    for _ in range(5):
        broadcast.request_keyframe()
    assert not broadcast.keyframe_wanted(now=1.1), "too soon after the last one"
    assert broadcast.keyframe_wanted(now=1.25)
    broadcast.publish("k1", is_keyframe=True, now=1.25)
    assert not broadcast.keyframe_wanted(now=2.0), "one keyframe served all five"


def test_capture_stamps_survive_h264_and_damage_is_detected() -> None:
    encoder = VideoEncoder(EncoderConfig(width=320, height=240, bitrate_bps=300_000))
    decoder = av.CodecContext.create("h264", "r")
    camera = FakeCamera((320, 240))
    base_ms = 1_800_000_000_000
    read_back = []
    for n in range(20):
        image = camera.read()
        stamp(image, base_ms + n)
        for packet in encoder.encode(image, pts=n * 3000, keyframe=n == 10):
            for frame in decoder.decode(packet):
                luma = frame.to_ndarray(format="gray")
                read_back.append(read_stamp(luma, now_ms=base_ms + 100))
    assert read_back == [base_ms + n for n in range(20)]
    assert encoder.frames_encoded == 20
    assert encoder.keyframes == 2

    # A scribble over the code is reported as unreadable, not as a time.
    image = camera.read()
    stamp(image, base_ms)
    image[8:16, 0:40] = 255 - image[8:16, 0:40]
    assert read_stamp(image[:, :, 1], now_ms=base_ms) is None


# -- end to end ------------------------------------------------------------------


async def test_viewers_get_full_rate_pictures_from_one_encoding(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    async with open_room(server_ssl_context, client_ssl_context) as room:
        publisher, _ = await room.start_host()
        viewers = [(await room.start_viewer())[0] for _ in range(3)]
        await wait_until(lambda: all(v.stats.frames > 0 for v in viewers), 10)

        # Measure two seconds of steady streaming.
        before = publisher.statistics()
        queued_before = _queued(publisher)
        frames_before = [v.stats.frames for v in viewers]
        await trio.sleep(2)
        after = publisher.statistics()
        queued = [n - queued_before[name] for name, n in _queued(publisher).items()]
        shown = [
            v.stats.frames - n for v, n in zip(viewers, frames_before, strict=True)
        ]

        # One encoding per captured frame, however many viewers ...
        encoded = after.frames_encoded - before.frames_encoded
        captured = after.frames_captured - before.frames_captured
        assert encoded <= captured + 1
        assert encoded >= 0.6 * FPS * 2, f"camera ran at {encoded / 2} fps"

        # ... and those same packets are queued for every viewer, who shows
        # them. The margin on showing is for a busy machine: this one process
        # runs the host, three viewers' decoders and signaling.
        assert len(queued) == 3
        assert all(count >= 0.9 * encoded for count in queued), (queued, encoded)
        assert all(count >= 0.4 * encoded for count in shown), (shown, encoded)
        for viewer in viewers:
            assert (viewer.stats.width, viewer.stats.height) == SIZE
            assert viewer.stats.latency_percentile_ms(50) is not None
            assert viewer.stats.latency_percentile_ms(50) < 1500
            assert viewer.stats.unreadable_stamps <= 2

        # A late joiner sees a picture quickly (about 0.3 s on an idle
        # machine; the bound allows for a loaded one).
        late, _ = await room.start_viewer()
        await wait_until(lambda: late.stats.frames > 0, 5)
        assert late.stats.time_to_first_frame_s is not None
        assert late.stats.time_to_first_frame_s < 2.5


async def test_viewer_waits_for_the_next_host_when_the_host_leaves(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    async with open_room(server_ssl_context, client_ssl_context) as room:
        viewer, _ = await room.start_viewer()
        assert viewer.stats.frames == 0
        assert not viewer.host_present

        _, first_host = await room.start_host()
        await wait_until(lambda: viewer.stats.frames >= 10, 10)
        first_host.cancel()
        await wait_until(lambda: not viewer.host_present, 5)

        seen = viewer.stats.frames
        await room.start_host()
        await wait_until(lambda: viewer.stats.frames >= seen + 10, 10)


async def test_picture_loss_reports_reach_the_shared_encoder() -> None:
    requests: list[str] = []

    async def never() -> object:
        await trio.sleep_forever()

    async with (
        bridge.open_bridge(),
        bridge.open_sender(never, lambda: requests.append("keyframe")) as peer,
    ):
        # Deliver an RTCP PLI to the sender exactly as aiortc's transport
        # would; with pre-encoded packets aiortc alone would ignore it.
        sender = peer._connection.getTransceivers()[0].sender
        pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=sender._ssrc)
        await bridge.trio_asyncio.aio_as_trio(sender._handle_rtcp_packet)(pli)
    assert requests == ["keyframe"]


async def test_join_and_leave_cycles_leave_nothing_behind(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    process = psutil.Process()
    tasks_at_start = _count_tasks(trio.lowlevel.current_root_task())

    async with open_room(server_ssl_context, client_ssl_context) as room:
        publisher, host = await room.start_host()

        async def one_cycle() -> None:
            viewer, scope = await room.start_viewer()
            await wait_until(lambda: viewer.stats.frames >= 3, 10)
            scope.cancel()

            # Both ends have let go: the viewer's task and the host's peer.
            await wait_until(lambda: publisher.statistics().viewers == 0, 5)

        await one_cycle()
        baseline = await _settled(process, None)
        for _ in range(12):
            await one_cycle()
        after_cycles = await _settled(process, baseline)
        host.cancel()

    assert publisher.statistics().viewers_served == 13
    assert after_cycles.threads <= baseline.threads, (baseline, after_cycles)
    assert after_cycles.fds <= baseline.fds, (baseline, after_cycles)
    assert after_cycles.tasks <= baseline.tasks, (baseline, after_cycles)
    assert after_cycles.rss_mb - baseline.rss_mb < 40, (baseline, after_cycles)

    # With the host and signaling gone too, only trio's idle worker threads
    # (which expire on their own) may remain, and no task of ours.
    assert _our_threads() == []
    assert _count_tasks(trio.lowlevel.current_root_task()) == tasks_at_start


def _queued(publisher: Publisher) -> dict[str, int]:
    return {name: s.queued for name, s in publisher.viewer_statistics().items()}


@dataclass(frozen=True)
class _Resources:
    threads: int
    fds: int
    tasks: int
    rss_mb: float


async def _settled(process: psutil.Process, target: _Resources | None) -> _Resources:
    """Resources once teardown has finished (or 5 s have passed).

    Closing happens in the background after a viewer leaves (the host hears
    of it through signaling), so poll until the counts stop falling, or fall
    to ``target``.
    """
    current = _resources(process)
    with trio.move_on_after(5):
        while True:
            await trio.sleep(0.2)
            previous, current = current, _resources(process)
            if target is not None and _within(current, target):
                break
            if target is None and (previous.fds, previous.tasks, previous.threads) == (
                current.fds,
                current.tasks,
                current.threads,
            ):
                break
    return current


def _within(current: _Resources, target: _Resources) -> bool:
    return (
        current.fds <= target.fds
        and current.tasks <= target.tasks
        and current.threads <= target.threads
    )


def _resources(process: psutil.Process) -> _Resources:
    gc.collect()
    return _Resources(
        threads=len(_our_threads()),
        fds=len(os.listdir("/proc/self/fd")),
        tasks=_count_tasks(trio.lowlevel.current_root_task()),
        rss_mb=process.memory_info().rss / 2**20,
    )


def _our_threads() -> list[str]:
    """Live threads other than the main one and trio's reusable workers."""
    return [
        thread.name
        for thread in threading.enumerate()
        if thread is not threading.main_thread()
        and not thread.name.startswith("Trio thread")
    ]


def _count_tasks(task: trio.lowlevel.Task | None) -> int:
    if task is None:
        return 0
    return 1 + sum(
        _count_tasks(child)
        for nursery in task.child_nurseries
        for child in nursery.child_tasks
    )
