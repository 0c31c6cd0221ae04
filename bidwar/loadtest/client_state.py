"""What one load-test client knows from the wire, and the checks it makes.

Pure bookkeeping, no I/O, shared by the bidders and the host:

* :class:`LotView` — the current lot as far as this client has heard, enough
  to choose the next bid (price + increment, or the starting price).
* :class:`SeqTracker` — checks that event sequence numbers increase by
  exactly one, or are reset by an explicit ``snapshot`` (docs/protocol.md).
* :class:`RequestLedger` — every request sent, so each reply is matched to
  exactly one request and an acknowledgement latency can be measured.

Violations are counted in a :class:`~bidwar.loadtest.metrics.GroupTally`
rather than raised: a load test reports every problem it sees and carries on.
"""

import dataclasses
from typing import Any

from bidwar import money
from bidwar.loadtest.metrics import GroupTally


def cents(text: str | None) -> int | None:
    return None if text is None else money.parse_amount(text)


@dataclasses.dataclass
class LotView:
    """The lot as this client knows it; ``state`` is None before any lot."""

    lot: int | None = None
    state: str | None = None
    starting_cents: int = 0
    increment_cents: int = 100
    price_cents: int | None = None
    leader: str | None = None
    ends_at_ms: int | None = None
    extensions: int = 0
    closed: dict[str, Any] | None = None

    def next_bid_cents(self) -> int:
        """The least bid the server can accept, as far as this client knows."""
        if self.price_cents is None:
            return self.starting_cents
        return self.price_cents + self.increment_cents

    def is_open(self) -> bool:
        return self.state == "open"

    def apply_snapshot(self, lot: dict[str, Any] | None) -> None:
        if lot is None:
            return
        self.lot = lot["lot"]
        self.state = lot["state"]
        self.starting_cents = cents(lot["starting_price"]) or 0
        self.increment_cents = cents(lot["increment"]) or self.increment_cents
        self.price_cents = cents(lot.get("price"))
        self.leader = lot.get("leader")
        self.ends_at_ms = lot.get("ends_at_ms")

    def apply_event(self, event: dict[str, Any]) -> None:
        """Update from one sequenced event (unrelated event types are ignored)."""
        kind = event["type"]
        if kind == "bid":
            self.price_cents = cents(event["amount"])
            self.leader = event["bidder"]
            self.ends_at_ms = event["ends_at_ms"]
        elif kind == "lot_opened":
            self._open(event)
        elif kind == "lot_extended":
            self.ends_at_ms = event["ends_at_ms"]
            self.extensions += 1
        elif kind == "lot_closed":
            self.state = "closed"
            self.closed = event
        elif kind in ("lot_paused", "lot_resumed"):
            self.state = "paused" if kind == "lot_paused" else "open"
            self.ends_at_ms = event.get("ends_at_ms")
        elif kind == "increment_changed" and event["lot"] == self.lot:
            self.increment_cents = cents(event["increment"]) or self.increment_cents

    def _open(self, event: dict[str, Any]) -> None:
        self.lot = event["lot"]
        self.state = "open"
        self.starting_cents = cents(event["starting_price"]) or 0
        self.increment_cents = cents(event["increment"]) or self.increment_cents
        self.price_cents = None
        self.leader = None
        self.ends_at_ms = event["ends_at_ms"]
        self.extensions = 0
        self.closed = None


class SeqTracker:
    """Checks one client's event order across all of its connections.

    A fresh join (``hello`` without ``last_seq``) must start with a snapshot;
    a resume continues from the ``last_seq`` it sent.  After that every event
    has the next seq, and a snapshot may jump forward but never back.
    """

    def __init__(self, who: str, tally: GroupTally) -> None:
        self.who = who
        self.last_seq: int | None = None
        self.snapshots = 0
        self._tally = tally

    def fresh_join(self) -> None:
        self.last_seq = None

    def on_snapshot(self, seq: int) -> None:
        self.snapshots += 1
        if self.last_seq is not None and seq < self.last_seq:
            self._tally.seq_error(
                f"{self.who}: snapshot at seq {seq} after seq {self.last_seq}"
            )
        self.last_seq = max(seq, self.last_seq or 0)

    def on_event(self, seq: int) -> bool:
        """Record ``seq``; False (and an error counted) when out of order."""
        expected = None if self.last_seq is None else self.last_seq + 1
        if seq == expected:
            self.last_seq = seq
            return True

        if expected is None:
            problem = f"event seq {seq} before any snapshot"
        elif seq < expected:
            problem = f"event seq {seq} repeated or old (expected {expected})"
        else:
            problem = f"event seq {seq} skipped {seq - expected} (expected {expected})"
        self._tally.seq_error(f"{self.who}: {problem}")
        self.last_seq = max(seq, self.last_seq or 0)
        return False


@dataclasses.dataclass
class Request:
    """One request id: how often it was sent, and what came back."""

    id: str
    kind: str
    frame: str
    sent_at: float
    sends: int = 1
    replies: int = 0
    verdict: str | None = None


class RequestLedger:
    """Every request one client sent, matched against its replies.

    A request sent *n* times (the first send plus resends after a reconnect)
    may be answered up to *n* times, always with the same verdict; one that
    was never answered, or answered more often than sent, is a violation.
    """

    def __init__(self, who: str, tally: GroupTally) -> None:
        self.who = who
        self.requests: dict[str, Request] = {}
        self.unanswered: dict[str, Request] = {}
        self._tally = tally

    def sent(self, request_id: str, kind: str, frame: str, now: float) -> None:
        request = Request(request_id, kind, frame, now)
        self.requests[request_id] = request
        self.unanswered[request_id] = request
        self._tally.sent[kind] += 1

    def resent(self, request_id: str, now: float) -> None:
        request = self.requests[request_id]
        request.sends += 1
        request.sent_at = now
        self._tally.resent += 1

    def on_reply(self, reply: dict[str, Any], now: float) -> Request | None:
        """Match ``reply``; return its request the first time it is answered."""
        request_id = reply.get("id")
        request = self.requests.get(request_id) if request_id is not None else None
        if request is None:
            self._tally.reply_error(f"{self.who}: reply for unknown id {request_id!r}")
            return None

        verdict = "accepted" if reply["type"] == "accepted" else reply.get("reason")
        request.replies += 1
        if request.replies > request.sends:
            self._tally.reply_error(
                f"{self.who}: {request.replies} replies to {request_id!r} "
                f"sent {request.sends} time(s)"
            )
        if request.verdict is not None:
            if verdict != request.verdict:
                self._tally.reply_error(
                    f"{self.who}: {request_id!r} answered {request.verdict} "
                    f"then {verdict}"
                )
            return None

        request.verdict = verdict
        del self.unanswered[request_id]
        self._tally.replies[f"{request.kind}:{verdict}"] += 1
        return request

    def check_all_answered(self) -> None:
        for request_id, request in self.unanswered.items():
            self._tally.reply_error(
                f"{self.who}: {request.kind} {request_id!r} never answered "
                f"(sent {request.sends} time(s))"
            )
