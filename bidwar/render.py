"""Server frames as one line of text for a person reading a terminal.

Each function takes the frame, the client's :class:`~bidwar.view.AuctionView`
*after* the frame was applied, and the viewer's own name, so lines can say
"you" where it matters ("you lead", "you were outbid").
"""

from typing import Any

from bidwar.money import format_cents, parse_amount
from bidwar.view import AuctionView


def render_frame(
    frame: dict[str, Any], view: AuctionView, me: str, now_ms: int
) -> str | None:
    """One line describing ``frame``, or None when nothing is worth saying."""
    kind = frame.get("type")
    renderer = _RENDERERS.get(kind)  # type: ignore[arg-type]
    if renderer is None:
        return None
    return renderer(frame, view, me, now_ms)


def render_status(view: AuctionView, now_ms: int) -> str:
    """The whole picture: lot, price, leader, time left, host, counts."""
    lines = [f"host: {view.host or 'none'} | {_counts(view.bidders, view.viewers)}"]
    lot = view.lot
    if lot is None:
        lines.append("no lot yet")
        return "\n".join(lines)

    lines.append(f"lot {lot.lot}: {lot.title} ({lot.state})")
    if lot.price is None:
        lines.append(f"  no bids yet; starting price {lot.starting_price}")
    else:
        lines.append(f"  price {lot.price} by {lot.leader}; {lot.bid_count} bids")
    if lot.state == "closed":
        lines.append(f"  {lot.outcome}")
        return "\n".join(lines)

    lines.append(
        f"  next bid at least {_next_minimum(view)}; increment {lot.increment}"
    )
    remaining = view.remaining_ms(now_ms)
    if remaining is not None:
        paused = " (paused)" if lot.state == "paused" else ""
        lines.append(f"  {_seconds(remaining)} left{paused}")
    return "\n".join(lines)


def _next_minimum(view: AuctionView) -> str:
    lot = view.lot
    assert lot is not None
    if lot.price is None:
        return lot.starting_price
    return format_cents(parse_amount(lot.price) + parse_amount(lot.increment))


def _counts(bidders: int, viewers: int) -> str:
    return f"{bidders} bidder{'' if bidders == 1 else 's'}, {viewers} watching"


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.0f} s"


def _lot_opened(frame: dict[str, Any], view: AuctionView, me: str, now_ms: int) -> str:
    kind = (
        "sudden death"
        if frame["sudden_death"]
        else f"soft close {frame['extension_s']} s"
    )
    remaining = view.remaining_ms(now_ms)
    left = _seconds(remaining) if remaining is not None else "?"
    return (
        f"[lot {frame['lot']}] OPEN: {frame['title']} | starting at "
        f"{frame['starting_price']}, increment {frame['increment']}, "
        f"{left} left ({kind})"
    )


def _bid(frame: dict[str, Any], view: AuctionView, me: str, now_ms: int) -> str:
    who = "you" if frame["bidder"] == me else frame["bidder"]
    remaining = view.remaining_ms(now_ms)
    left = f", {_seconds(remaining)} left" if remaining is not None else ""
    number = frame["bid_count"]
    return f"[lot {frame['lot']}] {frame['amount']} by {who} (bid {number}{left})"


def _extended(frame: dict[str, Any], view: AuctionView, me: str, now_ms: int) -> str:
    remaining = view.remaining_ms(now_ms)
    left = _seconds(remaining) if remaining is not None else "?"
    return f"[lot {frame['lot']}] extended: {left} left"


def _paused(frame: dict[str, Any], view: AuctionView, me: str, now_ms: int) -> str:
    why = " after a server restart" if frame.get("reason") == "recovered" else ""
    return (
        f"[lot {frame['lot']}] paused{why} with {_seconds(frame['remaining_ms'])} left"
    )


def _resumed(frame: dict[str, Any], view: AuctionView, me: str, now_ms: int) -> str:
    remaining = view.remaining_ms(now_ms)
    left = _seconds(remaining) if remaining is not None else "?"
    return f"[lot {frame['lot']}] resumed: {left} left"


def _increment(frame: dict[str, Any], view: AuctionView, me: str, now_ms: int) -> str:
    return f"increment is now {frame['increment']}"


def _closed(frame: dict[str, Any], view: AuctionView, me: str, now_ms: int) -> str:
    if frame["outcome"] == "sold":
        who = "YOU" if frame["winner"] == me else frame["winner"]
        return f"[lot {frame['lot']}] SOLD to {who} for {frame['price']}"
    return f"[lot {frame['lot']}] PASSED: no bids"


def _chat(frame: dict[str, Any], view: AuctionView, me: str, now_ms: int) -> str:
    return f"<{frame['author']}> {frame['text']}"


def _host_changed(
    frame: dict[str, Any], view: AuctionView, me: str, now_ms: int
) -> str:
    host = frame["host"]
    if host is None:
        return "there is no host now"
    return "you are the host" if host == me else f"{host} is the host"


def _outbid(frame: dict[str, Any], view: AuctionView, me: str, now_ms: int) -> str:
    return f"you were outbid: {frame['by']} bid {frame['amount']} on lot {frame['lot']}"


def _snapshot(frame: dict[str, Any], view: AuctionView, me: str, now_ms: int) -> str:
    lines = [render_status(view, now_ms)]
    for result in frame.get("results", []):
        lines.append(_closed(result, view, me, now_ms) + " (earlier)")
    for chat in frame.get("chat", [])[-5:]:
        lines.append(_chat(chat, view, me, now_ms))
    return "\n".join(lines)


def _presence(frame: dict[str, Any], view: AuctionView, me: str, now_ms: int) -> str:
    return _counts(frame["bidders"], frame["viewers"])


def _accepted(
    frame: dict[str, Any], view: AuctionView, me: str, now_ms: int
) -> str | None:
    result = frame.get("result") or {}
    if "amount" in result and "seq" in result:
        return f"ok: your bid of {result['amount']} on lot {result['lot']} is in"
    # Other acceptances are visible through the event they caused.
    return None


def _rejected(frame: dict[str, Any], view: AuctionView, me: str, now_ms: int) -> str:
    return f"refused ({frame['reason']}): {frame['message']}"


def _bye(frame: dict[str, Any], view: AuctionView, me: str, now_ms: int) -> str:
    return f"the server is closing this connection: {frame['reason']}"


_RENDERERS = {
    "lot_opened": _lot_opened,
    "bid": _bid,
    "lot_extended": _extended,
    "lot_paused": _paused,
    "lot_resumed": _resumed,
    "increment_changed": _increment,
    "lot_closed": _closed,
    "chat": _chat,
    "host_changed": _host_changed,
    "outbid": _outbid,
    "snapshot": _snapshot,
    "presence": _presence,
    "accepted": _accepted,
    "rejected": _rejected,
    "bye": _bye,
}
