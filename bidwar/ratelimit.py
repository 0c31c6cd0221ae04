"""Token buckets: a steady rate with room for a short burst.

Small enough to own rather than import: the limits are part of the auction
protocol (a ``rate_limited`` reply, per request kind) and must run on trio's
clock so tests can drive them with ``autojump_clock``.
"""

import dataclasses

import trio


@dataclasses.dataclass(frozen=True)
class Rate:
    per_s: float
    burst: int


class TokenBucket:
    """Allows ``rate.per_s`` events a second on average, ``rate.burst`` at once."""

    def __init__(self, rate: Rate) -> None:
        self._rate = rate
        self._tokens = float(rate.burst)
        self._updated_at = trio.current_time()

    def allow(self) -> bool:
        """Take one token if there is one; never waits."""
        now = trio.current_time()
        refill = (now - self._updated_at) * self._rate.per_s
        self._tokens = min(float(self._rate.burst), self._tokens + refill)
        self._updated_at = now

        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
