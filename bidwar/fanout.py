"""Per-connection outgoing queues with a written-down policy for slow readers.

Every event is serialised once by the room and the same ``str`` is pushed to
every connection's :class:`Outbox`; pushing never blocks, so one slow client
cannot delay the room or anyone else.  Each outbox holds three kinds of frame:

* **events** (sequenced broadcasts): bounded by ``max_events``.  When a client
  falls that far behind, its queued events are thrown away and replaced by one
  *resync*: the next frame it gets is a fresh snapshot (made when it is about
  to be sent, so it is the latest state), which also carries the lot results
  it missed.  Events the snapshot already covers are skipped, so the client
  sees sequence numbers that increase without gaps or an explicit resync.
* **direct** frames (its own replies, outbid notices): never dropped.  They
  are bounded too (``max_direct``); a client that lets that many pile up is
  not reading at all and is disconnected by its writer.
* **notices** keyed by name (presence counts): conflated, latest wins.

Frames leave in the order they were pushed.  A resync takes the place in the
queue where the overflow happened: direct frames pushed before it go out
before the snapshot, and the snapshot (taken when it is sent) already covers
every event pushed after it.
"""

import collections
import dataclasses
from collections.abc import Callable

import trio

# Marks the queue position of a pending resync.
_RESYNC = -1

SnapshotFactory = Callable[[int], tuple[int, str]]
"""Given the last seq the client received, return (snapshot seq, frame)."""


class OutboxOverflow(Exception):
    """More direct frames are queued than the client could ever be owed."""


@dataclasses.dataclass
class OutboxStatistics:
    queued_events: int
    queued_direct: int
    resyncs: int
    last_sent_seq: int


class Outbox:
    """A bounded, conflating queue of frames for one connection.

    Push methods are synchronous and never block.  :meth:`next_frame` is
    awaited by the connection's single writer task.
    """

    def __init__(
        self,
        make_snapshot: SnapshotFactory,
        *,
        max_events: int = 256,
        max_direct: int = 1024,
        last_sent_seq: int = 0,
    ) -> None:
        self._make_snapshot = make_snapshot
        self._max_events = max_events
        self._max_direct = max_direct

        # (seq, frame) for events, (None, frame) for direct frames and
        # (_RESYNC, "") where a snapshot is to be sent.
        self._queue: collections.deque[tuple[int | None, str]] = collections.deque()
        self._queued_events = 0
        self._notices: dict[str, str] = {}
        self._resync_pending = False
        self._resyncs = 0
        self._last_sent_seq = last_sent_seq
        self._wakeup = trio.Event()

    def push_event(self, seq: int, frame: str) -> None:
        """Queue a sequenced broadcast, resyncing instead when too far behind."""
        if seq <= self._last_sent_seq:
            return
        if self._resync_pending:
            # The snapshot that goes out next will cover this event.
            return
        if self._queued_events >= self._max_events:
            self._drop_events_for_resync()
            return
        self._queue.append((seq, frame))
        self._queued_events += 1
        self._wake()

    def push_direct(self, frame: str) -> None:
        """Queue a frame that must arrive: a reply or a personal notice."""
        if self._direct_count() >= self._max_direct:
            raise OutboxOverflow(f"{self._max_direct} unread replies")
        self._queue.append((None, frame))
        self._wake()

    def push_notice(self, key: str, frame: str) -> None:
        """Queue a display-only notice; a newer one with the same key replaces it."""
        self._notices[key] = frame
        self._wake()

    def start_after(self, seq: int) -> None:
        """Declare that the client already has every event up to ``seq``."""
        self._last_sent_seq = seq

    def request_resync(self) -> None:
        """Send a fresh snapshot next (used right after a client joins)."""
        self._drop_events_for_resync()

    async def next_frame(self) -> str:
        """Wait for and return the next frame to send, in policy order."""
        while True:
            frame = self._take()
            if frame is not None:
                return frame
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    def take_ready(self, limit: int | None = None) -> list[str]:
        """What :meth:`next_frame` would return now (up to ``limit``), without
        waiting."""
        frames: list[str] = []
        while limit is None or len(frames) < limit:
            frame = self._take()
            if frame is None:
                break
            frames.append(frame)
        return frames

    @property
    def last_sent_seq(self) -> int:
        """The newest event seq handed to the writer (directly or by snapshot)."""
        return self._last_sent_seq

    def statistics(self) -> OutboxStatistics:
        return OutboxStatistics(
            queued_events=self._queued_events,
            queued_direct=self._direct_count(),
            resyncs=self._resyncs,
            last_sent_seq=self._last_sent_seq,
        )

    def _take(self) -> str | None:
        while self._queue:
            seq, frame = self._queue.popleft()
            if seq is None:
                return frame
            if seq == _RESYNC:
                return self._snapshot()
            self._queued_events -= 1
            if seq > self._last_sent_seq:
                self._last_sent_seq = seq
                return frame

        if self._notices:
            key = next(iter(self._notices))
            return self._notices.pop(key)
        return None

    def _snapshot(self) -> str:
        self._resync_pending = False
        seq, frame = self._make_snapshot(self._last_sent_seq)
        self._last_sent_seq = max(self._last_sent_seq, seq)
        return frame

    def _drop_events_for_resync(self) -> None:
        if self._resync_pending:
            return
        self._queue = collections.deque(
            entry for entry in self._queue if entry[0] is None
        )
        self._queue.append((_RESYNC, ""))
        self._queued_events = 0
        self._resync_pending = True
        self._resyncs += 1
        self._wake()

    def _direct_count(self) -> int:
        return len(self._queue) - self._queued_events - int(self._resync_pending)

    def _wake(self) -> None:
        self._wakeup.set()
