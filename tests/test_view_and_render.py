"""The client's picture of the auction, and the lines a person reads."""

import pytest

from bidwar.render import render_frame, render_status
from bidwar.view import AuctionView, SequenceGap

NOW = 1_000_000


def opened(seq=1, ends_at_ms=NOW + 30_000):
    return {
        "type": "lot_opened", "seq": seq, "at_ms": NOW, "lot": 1, "title": "Lamp",
        "starting_price": "10.00", "increment": "1.00", "ends_at_ms": ends_at_ms,
        "extension_s": 10, "sudden_death": False,
    }  # fmt: skip


def bid(seq, bidder, amount, ends_at_ms=NOW + 30_000):
    return {
        "type": "bid", "seq": seq, "at_ms": NOW, "lot": 1, "bidder": bidder,
        "amount": amount, "ends_at_ms": ends_at_ms, "bid_count": seq - 1,
        "request_id": f"r{seq}",
    }  # fmt: skip


def view_after(*frames):
    view = AuctionView()
    for frame in frames:
        view.apply(frame)
    return view


def test_events_move_the_price_and_the_leader():
    view = view_after(opened(), bid(2, "ann", "10.00"), bid(3, "bob", "11.00"))

    assert (view.lot.price, view.lot.leader, view.lot.bid_count) == ("11.00", "bob", 2)
    assert view.last_seq == 3


def test_a_repeated_event_is_ignored_and_a_skipped_one_is_a_gap():
    view = view_after(opened())

    assert view.apply(opened()) is False
    with pytest.raises(SequenceGap):
        view.apply(bid(3, "ann", "10.00"))


def test_a_snapshot_resets_the_sequence():
    view = view_after(opened())
    view.apply({"type": "snapshot", "seq": 40, "lot": None, "host": "h"})

    assert (view.last_seq, view.lot, view.host) == (40, None, "h")
    assert view.apply(bid(41, "ann", "10.00")) is True


def test_the_countdown_uses_the_servers_clock():
    view = view_after(opened(ends_at_ms=NOW + 30_000))
    view.set_clock(server_time_ms=NOW + 5_000, sent_at_ms=NOW, received_at_ms=NOW)

    assert view.remaining_ms(local_now_ms=NOW) == 25_000


def test_status_of_an_open_lot_names_the_next_minimum_and_time_left():
    view = view_after(opened(), bid(2, "ann", "10.00"))
    view.bidders, view.viewers = 1, 2

    text = render_status(view, NOW)

    assert "1 bidder, 2 watching" in text
    assert "price 10.00 by ann" in text
    assert "next bid at least 11.00" in text
    assert "30 s left" in text


def test_status_of_a_closed_lot_offers_no_next_bid():
    closed = {
        "type": "lot_closed", "seq": 3, "at_ms": NOW, "lot": 1, "outcome": "sold",
        "winner": "ann", "price": "10.00", "bid_count": 1,
    }  # fmt: skip
    view = view_after(opened(), bid(2, "ann", "10.00"), closed)

    text = render_status(view, NOW)

    assert "sold" in text
    assert "next bid" not in text


def test_lines_say_you_where_it_is_you():
    view = view_after(opened(), bid(2, "ann", "10.00"))

    assert "by you" in render_frame(bid(2, "ann", "10.00"), view, "ann", NOW)
    outbid = {"type": "outbid", "lot": 1, "amount": "11.00", "by": "bob"}
    assert render_frame(outbid, view, "ann", NOW) == (
        "you were outbid: bob bid 11.00 on lot 1"
    )


def test_a_refusal_shows_its_reason_and_message():
    refusal = {"type": "rejected", "id": "1", "reason": "bid_too_low",
               "message": "bid at least 11.00"}  # fmt: skip

    line = render_frame(refusal, AuctionView(), "ann", NOW)

    assert line == "refused (bid_too_low): bid at least 11.00"
