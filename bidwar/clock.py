"""The server's clock: wall-clock milliseconds derived from trio's clock.

Lot deadlines are wall-clock times (bidders see them as ``ends_at_ms``) but
the server waits for them with trio's clock.  Tying the two together once, at
start-up, means tests that run under trio's ``MockClock`` get deterministic
wall-clock times too, and that a wall-clock jump (NTP) never makes a lot end
early: trio's clock is monotonic.
"""

import time

import trio


class ServerClock:
    """Maps trio's monotonic clock to epoch milliseconds.

    Must be created inside ``trio.run``.
    """

    def __init__(self, epoch_ms_at_start: int | None = None) -> None:
        start_ms = (
            epoch_ms_at_start
            if epoch_ms_at_start is not None
            else time.time_ns() // 1_000_000
        )
        self._offset_s = start_ms / 1000 - trio.current_time()

    def now_ms(self) -> int:
        return round((trio.current_time() + self._offset_s) * 1000)

    def trio_time(self, epoch_ms: int) -> float:
        """The trio clock reading at which ``epoch_ms`` is reached."""
        return epoch_ms / 1000 - self._offset_s
