"""Group commit: one writer task makes many events durable per fsync.

How this works
--------------
The room hands each accepted command's events to :class:`GroupCommitter`
without waiting.  One writer task takes everything that queued up while the
previous write was on disk and commits it as one transaction, then runs each
submission's ``on_durable`` callback, in submission order, on the trio
thread.  Replies and broadcasts are released from those callbacks, so nobody
is told about an event before it is fsynced, and durability costs one fsync
per batch rather than one per event.
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from bidwar.journal import EventStore, JournalClosed, JournalError, encode_event

logger = logging.getLogger("bidwar.journal")


OnDurable = Callable[[BaseException | None], None]


@dataclass
class _Submission:
    events: tuple[dict[str, Any], ...]
    on_durable: OnDurable


@dataclass(frozen=True)
class CommitterStatistics:
    """A snapshot of what a :class:`GroupCommitter` has done."""

    batches_written: int
    events_written: int
    batches_failed: int
    events_failed: int
    last_batch_events: int
    largest_batch_events: int
    pending_events: int
    last_seq: int


class GroupCommitter:
    """The single writer task: commits whatever queued up, in one transaction.

    Submissions are atomic (all of their events land in the same batch) and
    resolved in order.  ``max_pending`` bounds the events queued or being
    written; ``max_batch`` bounds one transaction (a single larger
    submission is still written whole).

    When a write fails, that batch *and everything queued behind it* fail
    with the same error: later events were computed from a state that
    included the lost ones, and their seqs would leave a gap.  The committer
    stays usable; the caller rebuilds its state from the store and carries
    on from ``store.last_seq + 1``.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        max_pending: int = 10_000,
        max_batch: int = 5_000,
        flush_timeout_s: float = 5.0,
    ) -> None:
        if max_pending < 1 or max_batch < 1:
            raise ValueError("max_pending and max_batch must be at least 1")
        self._store = store
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._flush_timeout_s = flush_timeout_s

        self._queue: deque[_Submission] = deque()
        self._pending_events = 0
        self._work = trio.Event()
        self._room = trio.lowlevel.ParkingLot()
        # A private limiter: journal writes never wait behind unrelated
        # to_thread work, and the connection is used by one thread at a time.
        self._limiter = trio.CapacityLimiter(1)
        self._running = False
        self._closed = False

        self._batches_written = 0
        self._events_written = 0
        self._batches_failed = 0
        self._events_failed = 0
        self._last_batch_events = 0
        self._largest_batch_events = 0

    def has_room(self, count: int = 1) -> bool:
        """Whether a submission of ``count`` events would be accepted now."""
        return not self._closed and self._has_room(count)

    def submit_nowait(
        self, events: Sequence[dict[str, Any]], on_durable: OnDurable
    ) -> None:
        """Queue ``events`` to be written; never blocks.

        ``on_durable(None)`` runs on the trio thread once the batch holding
        them is committed and fsynced; ``on_durable(error)`` if it failed.
        Callbacks run in submission order and must not block; one that
        raises is logged and the others still run.  An empty ``events`` is a
        barrier: its callback runs once everything submitted before it is
        resolved.

        Raises :class:`trio.WouldBlock` when accepting would exceed
        ``max_pending`` (nothing is queued; reject with ``unavailable`` or
        wait with :meth:`submit`), :class:`JournalClosed` after the writer
        has stopped, and :class:`ValueError`/:class:`TypeError` for a
        malformed event (nothing is queued).
        """
        submission = self._prepare(events, on_durable)
        if not self._has_room(len(submission.events)):
            raise trio.WouldBlock
        self._enqueue(submission)

    async def submit(
        self, events: Sequence[dict[str, Any]], on_durable: OnDurable
    ) -> None:
        """Like :meth:`submit_nowait`, but waits for room instead of raising.

        Cancelled while waiting, nothing was queued.  Once this returns the
        events will be written even if the caller is cancelled later.
        """
        submission = self._prepare(events, on_durable)
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._has_room(len(submission.events)):
            await self._room.park()
            self._check_open()
        self._enqueue(submission)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_for_room(self, count: int = 1) -> None:
        """Return once a submission of ``count`` events would be accepted.

        For callers that must decide *and* submit without a checkpoint in
        between (the room's lot clock): wait first, then do both at once.
        """
        self._check_open()
        while not self._has_room(count):
            await self._room.park()
            self._check_open()

    async def commit(self, events: Sequence[dict[str, Any]]) -> None:
        """Submit ``events`` and wait until they are durable.

        Raises the batch's error if the write failed.  Cancelling the wait
        does not withdraw the events: they are still written.
        """
        done = trio.Event()
        outcome: list[BaseException | None] = []

        def on_durable(error: BaseException | None) -> None:
            outcome.append(error)
            done.set()

        await self.submit(events, on_durable)
        await done.wait()
        if outcome[0] is not None:
            # A copy: the same error object goes to every submission in the
            # batch, and raising one object in several tasks tangles tracebacks.
            raise copy.copy(outcome[0])

    def statistics(self) -> CommitterStatistics:
        return CommitterStatistics(
            batches_written=self._batches_written,
            events_written=self._events_written,
            batches_failed=self._batches_failed,
            events_failed=self._events_failed,
            last_batch_events=self._last_batch_events,
            largest_batch_events=self._largest_batch_events,
            pending_events=self._pending_events,
            last_seq=self._store.last_seq,
        )

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Be the writer task until cancelled; call ``started()`` when ready.

        On cancellation (or any other exit) it first writes what is already
        queued, shielded, for at most ``flush_timeout_s``; submissions still
        queued after that fail with :class:`JournalClosed`, and so does
        every later submission.  Then the cancellation propagates.  The
        store is not closed: its owner closes it.
        """
        if self._running or self._closed:
            raise RuntimeError("GroupCommitter.run() may only run once")
        self._running = True
        task_status.started()
        try:
            while True:
                await self._wait_for_work()
                await self._write_next_batch()
        finally:
            await self._flush_before_exit()

    # -- internals --

    def _prepare(
        self, events: Sequence[dict[str, Any]], on_durable: OnDurable
    ) -> _Submission:
        self._check_open()
        events = tuple(events)
        for event in events:
            encode_event(event)
        if len(events) > self._max_pending:
            raise ValueError(
                f"a submission of {len(events)} events can never fit in"
                f" max_pending={self._max_pending}"
            )
        return _Submission(events, on_durable)

    def _check_open(self) -> None:
        if self._closed:
            raise JournalClosed("the journal writer has stopped")

    def _has_room(self, count: int) -> bool:
        return self._pending_events + count <= self._max_pending

    def _enqueue(self, submission: _Submission) -> None:
        self._queue.append(submission)
        self._pending_events += len(submission.events)
        self._work.set()

    async def _wait_for_work(self) -> None:
        while not self._queue:
            self._work = trio.Event()
            await self._work.wait()

    async def _write_next_batch(self) -> None:
        """Write the submissions at the front of the queue and resolve them.

        They stay in the queue until the write finished, so a cancellation
        before the thread started loses nothing: the exit flush writes them.
        """
        count, events = self._front_batch()
        error: Exception | None = None
        if events:
            try:
                # Not abandonable: we must learn whether the commit happened.
                await trio.to_thread.run_sync(
                    self._store.append_batch,
                    events,
                    limiter=self._limiter,
                    abandon_on_cancel=False,
                )
            except Exception as exc:
                error = exc

        if error is None:
            self._resolve_written(count, len(events))
        else:
            self._resolve_failed(events, error)

    def _front_batch(self) -> tuple[int, list[dict[str, Any]]]:
        """Pick whole submissions from the front, up to ``max_batch`` events."""
        count = 0
        events: list[dict[str, Any]] = []
        for submission in self._queue:
            if events and len(events) + len(submission.events) > self._max_batch:
                break
            events.extend(submission.events)
            count += 1
        return count, events

    def _resolve_written(self, count: int, event_count: int) -> None:
        done = [self._queue.popleft() for _ in range(count)]
        self._pending_events -= event_count
        if event_count:
            self._batches_written += 1
            self._events_written += event_count
            self._last_batch_events = event_count
            self._largest_batch_events = max(self._largest_batch_events, event_count)
        self._room.unpark_all()
        _run_callbacks(done, None)

    def _resolve_failed(self, events: list[dict[str, Any]], error: Exception) -> None:
        # Everything queued now was built on top of the failed events.
        failed = list(self._queue)
        self._queue.clear()
        failed_events = self._pending_events
        self._pending_events = 0
        self._batches_failed += 1
        self._events_failed += failed_events
        logger.error(
            "journal write of events %d-%d failed; failing all %d pending events: %s",
            events[0]["seq"],
            events[-1]["seq"],
            failed_events,
            error,
            exc_info=not isinstance(error, JournalError),
        )
        self._room.unpark_all()
        _run_callbacks(failed, error)

    async def _flush_before_exit(self) -> None:
        with trio.move_on_after(self._flush_timeout_s, shield=True):
            while self._queue:
                await self._write_next_batch()

        self._closed = True
        self._running = False
        leftover = list(self._queue)
        self._queue.clear()
        self._pending_events = 0
        self._room.unpark_all()
        if leftover:
            logger.error(
                "journal writer stopped with %d submissions unwritten", len(leftover)
            )
            _run_callbacks(leftover, JournalClosed("the journal writer stopped"))


def _run_callbacks(
    submissions: Iterable[_Submission], error: BaseException | None
) -> None:
    for submission in submissions:
        try:
            submission.on_durable(error)
        except Exception:
            # One broken callback must not keep the others from hearing.
            logger.exception("on_durable callback %r raised", submission.on_durable)
