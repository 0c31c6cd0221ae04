"""Figures the load test collects: latency histograms and per-group tallies.

Everything here is plain data that pickles (worker processes send it to the
parent) and merges (the parent adds the workers' tallies together), so no
figure depends on how the bidders were spread over processes.

Latencies go into a log-bucketed histogram instead of a list: a thousand
bidders each receiving every bid event would otherwise ship millions of
floats between processes.  Buckets are 1 % wide, so a reported percentile is
within 1 % of the exact one (the exact minimum and maximum are kept too).
"""

import collections
import dataclasses
import math
from typing import Any

# The smallest latency told apart from zero, and the relative bucket width.
_FLOOR_MS = 0.01
_GROWTH = 1.01
_LOG_GROWTH = math.log(_GROWTH)

PERCENTILES = (50, 95, 99)
EXAMPLES_KEPT = 10


class LatencyHistogram:
    """Counts of latencies in milliseconds, in 1 %-wide buckets.

    ``record`` takes any float; values at or below 0.01 ms (including the
    small negative readings a coarse server timestamp can give) share the
    first bucket and count as 0.01 ms in percentiles.
    """

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.min_ms = math.inf
        self.max_ms = -math.inf
        self.negative = 0

    def record(self, ms: float) -> None:
        if ms < 0:
            self.negative += 1
        bucket = _bucket(ms)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.count += 1
        self.min_ms = min(self.min_ms, ms)
        self.max_ms = max(self.max_ms, ms)

    def merge(self, other: "LatencyHistogram") -> None:
        for bucket, count in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + count
        self.count += other.count
        self.negative += other.negative
        self.min_ms = min(self.min_ms, other.min_ms)
        self.max_ms = max(self.max_ms, other.max_ms)

    def percentile(self, p: float) -> float | None:
        """The nearest-rank ``p``-th percentile (0 < p ≤ 100), or None if empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(p / 100 * self.count))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(max(_upper_bound(bucket), self.min_ms), self.max_ms)
        return self.max_ms

    def summary(self) -> dict[str, Any]:
        """count, p50, p95, p99 and max in ms (None when nothing was recorded)."""
        figures: dict[str, Any] = {"count": self.count}
        for p in PERCENTILES:
            figures[f"p{p}_ms"] = _rounded(self.percentile(p))
        figures["max_ms"] = _rounded(self.max_ms if self.count else None)
        figures["negative"] = self.negative
        return figures


def _bucket(ms: float) -> int:
    if ms <= _FLOOR_MS:
        return 0
    return math.ceil(math.log(ms / _FLOOR_MS) / _LOG_GROWTH)


def _upper_bound(bucket: int) -> float:
    return _FLOOR_MS * _GROWTH**bucket


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@dataclasses.dataclass
class AcceptedBid:
    """One bid a client was told was accepted (from its reply)."""

    bidder: str
    request_id: str
    lot: int
    amount_cents: int
    seq: int


@dataclasses.dataclass
class GroupTally:
    """What one group of bidders (normal or slow) saw, summed over bidders.

    ``replies`` is keyed ``"<request type>:<accepted|reason>"``; ``closes``
    by close code (``"none"`` when the connection ended without a close
    frame).  ``seq_errors`` and ``reply_errors`` count protocol violations;
    the first few are kept as text in the matching ``*_examples`` list.
    """

    clients: int = 0
    connections_made: int = 0
    connections_failed: int = 0
    reconnects: int = 0
    sent: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    resent: int = 0
    replies: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    ack_ms: LatencyHistogram = dataclasses.field(default_factory=LatencyHistogram)
    broadcast_ms: LatencyHistogram = dataclasses.field(default_factory=LatencyHistogram)
    messages_per_client: list[int] = dataclasses.field(default_factory=list)
    resyncs: int = 0
    closes: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    seq_errors: int = 0
    seq_examples: list[str] = dataclasses.field(default_factory=list)
    reply_errors: int = 0
    reply_examples: list[str] = dataclasses.field(default_factory=list)
    accepted_bids: list[AcceptedBid] = dataclasses.field(default_factory=list)
    # (lot, outcome, winner, price) of every lot_closed event clients saw.
    closed_lots: collections.Counter[tuple] = dataclasses.field(
        default_factory=collections.Counter
    )

    def seq_error(self, text: str) -> None:
        self.seq_errors += 1
        if len(self.seq_examples) < EXAMPLES_KEPT:
            self.seq_examples.append(text)

    def reply_error(self, text: str) -> None:
        self.reply_errors += 1
        if len(self.reply_examples) < EXAMPLES_KEPT:
            self.reply_examples.append(text)

    def merge(self, other: "GroupTally") -> None:
        """Add ``other``'s figures to this tally."""
        for field in dataclasses.fields(self):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if isinstance(mine, LatencyHistogram):
                mine.merge(theirs)
            elif isinstance(mine, collections.Counter):
                mine.update(theirs)
            elif isinstance(mine, list):
                mine.extend(theirs)
            else:
                setattr(self, field.name, mine + theirs)
        del self.seq_examples[EXAMPLES_KEPT:]
        del self.reply_examples[EXAMPLES_KEPT:]

    def rejected_by_reason(self, request_type: str) -> dict[str, int]:
        prefix = f"{request_type}:"
        return {
            key.removeprefix(prefix): count
            for key, count in sorted(self.replies.items())
            if key.startswith(prefix) and key != f"{request_type}:accepted"
        }

    def summary(self) -> dict[str, Any]:
        """Every figure as JSON-ready data (histograms as percentiles)."""
        per_client = self.messages_per_client
        return {
            "clients": self.clients,
            "connections_made": self.connections_made,
            "connections_failed": self.connections_failed,
            "reconnects": self.reconnects,
            "sent": dict(self.sent),
            "resent": self.resent,
            "bids_accepted": self.replies["bid:accepted"],
            "bids_rejected": self.rejected_by_reason("bid"),
            "replies": dict(self.replies),
            "ack_ms": self.ack_ms.summary(),
            "broadcast_ms": self.broadcast_ms.summary(),
            "messages_per_client": {
                "min": min(per_client, default=0),
                "mean": round(sum(per_client) / len(per_client), 1)
                if per_client
                else 0,
                "max": max(per_client, default=0),
            },
            "resyncs": self.resyncs,
            "closes": dict(self.closes),
            "seq_errors": self.seq_errors,
            "seq_examples": self.seq_examples,
            "reply_errors": self.reply_errors,
            "reply_examples": self.reply_examples,
        }
