"""The video host and viewer ride out a restart of the signaling service.

As in test_video.py, media needs real time, so these tests poll for
conditions under generous ``fail_after`` bounds instead of sleeping.
"""

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import av
import pytest
import trio

from bidwar.media.camera import FakeCamera
from bidwar.media.publisher import Publisher, PublisherConfig
from bidwar.media.signaling_client import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    SignalingRejected,
    _backoff_s,
)
from bidwar.media.watcher import Watcher, WatcherConfig
from bidwar.signaling import SignalingConfig, serve_signaling
from tests.test_video import FPS, HOST_KEY, SIZE, wait_until

pytestmark = pytest.mark.slow


@dataclass
class Running:
    """A task started in the test's nursery that can be stopped and awaited."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finished: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None

    async def stop(self) -> None:
        self.scope.cancel()
        with trio.fail_after(10):
            await self.finished.wait()


async def start(
    nursery: trio.Nursery, run: Callable[..., Awaitable[object]]
) -> tuple[Running, object]:
    """Start ``run(task_status=...)``; return its handle and started() value.

    An exception from ``run`` after it started is kept in ``error`` rather
    than tearing down the test's nursery, so a test can assert on it.
    """

    async def body(*, task_status: trio.TaskStatus) -> None:
        try:
            with running.scope:
                await run(task_status=task_status)
        except Exception as error:
            running.error = error
        finally:
            running.finished.set()

    running = Running()
    value = await nursery.start(body)
    return running, value


def signaling(server_ssl: ssl.SSLContext, port: int, host_key: str = HOST_KEY):
    return partial(
        serve_signaling,
        SignalingConfig(port=port),
        ssl_context=server_ssl,
        host_key=host_key,
    )


def host_config(url: str) -> PublisherConfig:
    return PublisherConfig(
        url, HOST_KEY, width=SIZE[0], height=SIZE[1], fps=FPS, viewer_queue_frames=FPS
    )


async def test_host_and_viewer_carry_on_after_signaling_restarts(
    server_ssl_context: ssl.SSLContext,
    client_ssl_context: ssl.SSLContext,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "bidwar.media.signaling")
    recording = tmp_path / "lot.mp4"
    async with trio.open_nursery() as nursery:
        service, port = await start(nursery, signaling(server_ssl_context, 0))
        url = f"wss://127.0.0.1:{port}/"
        publisher = Publisher(
            host_config(url), FakeCamera(SIZE), ssl_context=client_ssl_context
        )
        host, _ = await start(nursery, publisher.run)
        watcher = Watcher(
            WatcherConfig(url, record=recording), ssl_context=client_ssl_context
        )
        viewer, _ = await start(nursery, watcher.run)
        await wait_until(lambda: watcher.stats.frames >= 10, 10)

        # The server goes away: both ends drop their peer connection ...
        await service.stop()
        await wait_until(lambda: publisher.statistics().viewers == 0, 5)
        await wait_until(lambda: watcher._session is None, 5)
        captured = publisher.statistics().frames_captured
        seen = watcher.stats.frames

        # ... and once it is back, the video resumes on its own.
        service, _ = await start(nursery, signaling(server_ssl_context, port))
        await wait_until(lambda: watcher.stats.frames >= seen + 10, 10)

        assert not host.finished.is_set(), host.error
        assert not viewer.finished.is_set(), viewer.error
        assert publisher.statistics().frames_captured > captured, "camera stopped"
        assert publisher.statistics().viewers_served == 2
        assert watcher.stats.time_to_first_frame_s is not None
        assert any(
            "signaling lost; reconnecting" in r.getMessage() for r in caplog.records
        )

        await viewer.stop()
        await host.stop()
        await service.stop()
        frames = watcher.stats.frames

    assert host.error is None and viewer.error is None
    with av.open(str(recording)) as container:
        recorded = sum(1 for _ in container.decode(video=0))
    assert recorded >= seen + 10, "one recording across the gap"
    assert recorded <= frames


async def test_a_refused_rejoin_is_still_fatal(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        service, port = await start(nursery, signaling(server_ssl_context, 0))
        url = f"wss://127.0.0.1:{port}/"
        publisher = Publisher(
            host_config(url), FakeCamera(SIZE), ssl_context=client_ssl_context
        )
        host, _ = await start(nursery, publisher.run)

        # The server comes back with another host key.
        await service.stop()
        service, _ = await start(
            nursery, signaling(server_ssl_context, port, host_key="other")
        )
        with trio.fail_after(10):
            await host.finished.wait()
        await service.stop()

    assert isinstance(host.error, SignalingRejected), host.error
    assert host.error.code == "bad_host_key"
    assert "bad_host_key" in str(host.error)


async def test_a_wrong_host_key_is_refused_at_once(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        service, port = await start(nursery, signaling(server_ssl_context, 0))
        config = PublisherConfig(f"wss://127.0.0.1:{port}/", "wrong")
        publisher = Publisher(config, FakeCamera(SIZE), ssl_context=client_ssl_context)
        with trio.fail_after(10), pytest.raises(SignalingRejected) as refused:
            await publisher.run()
        await service.stop()
    assert refused.value.code == "bad_host_key"


def test_backoff_doubles_from_a_quarter_second_to_five_with_jitter() -> None:
    for attempt, ceiling in [(1, 0.25), (2, 0.5), (3, 1.0), (5, 4.0), (9, 5.0)]:
        delays = [_backoff_s(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, delays)
        assert len(set(delays)) > 1, "jittered"
    assert (BACKOFF_INITIAL_S, BACKOFF_MAX_S) == (0.25, 5.0)
