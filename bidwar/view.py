"""A client's picture of the auction, kept up to date from server frames.

Pure bookkeeping, no I/O: feed it every frame the server sends and it holds
the current lot, price, leader, deadline, host and counts, the last sequence
number seen and the offset between the local clock and the server's.  The
bidder's screen, the demo and the load generator all read from it.
"""

import dataclasses
import logging
from typing import Any

log = logging.getLogger("bidwar.view")


class SequenceGap(Exception):
    """An event arrived with a sequence number past the next one expected."""


@dataclasses.dataclass
class LotView:
    lot: int
    title: str
    state: str
    starting_price: str
    increment: str
    price: str | None = None
    leader: str | None = None
    bid_count: int = 0
    ends_at_ms: int | None = None
    remaining_ms: int | None = None
    extension_s: int = 10
    sudden_death: bool = False
    outcome: str | None = None


@dataclasses.dataclass
class AuctionView:
    """The latest known auction state, as one bidder sees it."""

    last_seq: int = 0
    lot: LotView | None = None
    host: str | None = None
    bidders: int = 0
    viewers: int = 0
    clock_offset_ms: int = 0

    def server_now_ms(self, local_now_ms: int) -> int:
        return local_now_ms + self.clock_offset_ms

    def remaining_ms(self, local_now_ms: int) -> int | None:
        """Time left in the open lot by the server's clock, or None."""
        lot = self.lot
        if lot is None or lot.state == "closed":
            return None
        if lot.state == "paused":
            return lot.remaining_ms
        if lot.ends_at_ms is None:
            return None
        return max(0, lot.ends_at_ms - self.server_now_ms(local_now_ms))

    def set_clock(
        self, server_time_ms: int, sent_at_ms: int, received_at_ms: int
    ) -> None:
        """Estimate the clock offset from one request/reply round trip."""
        midpoint = (sent_at_ms + received_at_ms) // 2
        self.clock_offset_ms = server_time_ms - midpoint

    def apply(self, frame: dict[str, Any]) -> bool:
        """Apply one server frame; return False for a duplicate event.

        Raises :class:`SequenceGap` if an event skips ahead: the caller should
        ask for a snapshot (``status``) or reconnect.
        """
        kind = frame.get("type")
        if kind == "snapshot":
            self._apply_snapshot(frame)
            return True
        if kind == "presence":
            self.bidders, self.viewers = frame["bidders"], frame["viewers"]
            return True
        if "seq" not in frame or kind in ("accepted", "rejected"):
            return True

        seq = frame["seq"]
        if seq <= self.last_seq:
            return False
        if seq != self.last_seq + 1:
            raise SequenceGap(f"expected event {self.last_seq + 1}, got {seq}")
        self.last_seq = seq
        self._apply_event(kind, frame)
        return True

    def _apply_snapshot(self, frame: dict[str, Any]) -> None:
        self.last_seq = frame["seq"]
        self.host = frame.get("host")
        self.bidders = frame.get("bidders", self.bidders)
        self.viewers = frame.get("viewers", self.viewers)
        lot = frame.get("lot")
        self.lot = _lot_from_snapshot(lot) if lot else None

    def _apply_event(self, kind: str, event: dict[str, Any]) -> None:
        lot = self.lot
        if kind == "lot_opened":
            self.lot = LotView(
                lot=event["lot"],
                title=event["title"],
                state="open",
                starting_price=event["starting_price"],
                increment=event["increment"],
                ends_at_ms=event["ends_at_ms"],
                extension_s=event["extension_s"],
                sudden_death=event["sudden_death"],
            )
        elif kind == "host_changed":
            self.host = event["host"]
        elif lot is None or event.get("lot") not in (None, lot.lot):
            return
        elif kind == "bid":
            lot.price, lot.leader = event["amount"], event["bidder"]
            lot.bid_count, lot.ends_at_ms = event["bid_count"], event["ends_at_ms"]
        elif kind in ("lot_extended", "lot_resumed"):
            lot.state, lot.ends_at_ms, lot.remaining_ms = (
                "open",
                event["ends_at_ms"],
                None,
            )
        elif kind == "lot_paused":
            lot.state, lot.remaining_ms = "paused", event["remaining_ms"]
        elif kind == "increment_changed":
            lot.increment = event["increment"]
        elif kind == "lot_closed":
            lot.state, lot.outcome = "closed", event["outcome"]
            lot.price, lot.leader = event["price"], event["winner"]


def _lot_from_snapshot(data: dict[str, Any]) -> LotView:
    fields = {field.name for field in dataclasses.fields(LotView)}
    return LotView(**{key: value for key, value in data.items() if key in fields})
