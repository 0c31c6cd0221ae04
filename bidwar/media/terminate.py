"""Stop on Ctrl-C or SIGTERM by cancelling, so peers and files close cleanly.

Both signals are received here rather than left to trio's default, which
raises KeyboardInterrupt at whatever checkpoint happens to run: inside the
signaling client that can look like a lost connection and be retried
instead of ending the program.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from bidwar.media.errors import single_errors

log = logging.getLogger("bidwar.media")

T = TypeVar("T")


async def run_until_terminated(run: Callable[[], Awaitable[T]]) -> T | None:
    """Return ``run()``'s result, or None once SIGINT or SIGTERM cancelled it.

    An error from ``run`` propagates bare (not in an exception group).
    """
    result: list[T] = []
    with single_errors():
        await _run(run, result)
    return result[0] if result else None


async def _run(run: Callable[[], Awaitable[T]], result: list[T]) -> None:
    async with trio.open_nursery() as nursery:

        async def body() -> None:
            result.append(await run())
            nursery.cancel_scope.cancel()

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("%s received: stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()

        nursery.start_soon(watch_signals)
        nursery.start_soon(body)
