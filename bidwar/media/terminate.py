"""Treat SIGTERM like Ctrl-C, so ``kill`` also closes peers and files cleanly."""

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
    """Return ``run()``'s result, or None once SIGTERM cancelled it.

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
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    log.info("terminated")
                    nursery.cancel_scope.cancel()

        nursery.start_soon(watch_signals)
        nursery.start_soon(body)
