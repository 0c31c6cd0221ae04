"""The auction rules, one behaviour per test (bidwar.core)."""

import re
from pathlib import Path

import pytest

from bidwar.core import (
    Auction,
    BidPlaced,
    ChatPosted,
    ClaimHost,
    CloseLot,
    Decision,
    HostChanged,
    IncrementChanged,
    LotClosed,
    LotExtended,
    LotOpened,
    LotPaused,
    LotResumed,
    LotState,
    OpenLot,
    PauseLot,
    PlaceBid,
    PostChat,
    ReleaseHost,
    ResumeLot,
    Rules,
    SetIncrement,
    event_from_dict,
    event_to_dict,
)
from bidwar.money import MAX_CENTS

PROTOCOL = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

HOST = "hal"
T0 = 1_764_777_600_000
END = T0 + 60_000  # the default test lot runs 60 s from T0


def accept(auction: Auction, command, now_ms: int = T0) -> Decision:
    decision = auction.handle(command, now_ms)
    assert decision.accepted, decision
    return decision


def reject(auction: Auction, command, now_ms: int = T0) -> str | None:
    """Handle a command that must be rejected without any change; return the reason."""
    before = (
        auction.snapshot(now_ms),
        auction.last_seq,
        auction.default_increment_cents,
    )

    decision = auction.handle(command, now_ms)

    assert not decision.accepted, decision
    assert decision.events == () and decision.result == {}
    assert decision.message
    after = (
        auction.snapshot(now_ms),
        auction.last_seq,
        auction.default_increment_cents,
    )
    assert after == before
    return decision.reason


def hosted() -> Auction:
    auction = Auction()
    accept(auction, ClaimHost(HOST, "h-claim"))
    return auction


def opened(**options) -> Auction:
    """A hosted auction with lot 1 open at T0: starts at 10.00, runs 60 s."""
    auction = hosted()
    accept(auction, OpenLot(HOST, "h-open", "Guitar", 1000, 60, **options))
    return auction


def bid(actor: str, amount_cents: int, lot: int | None = None) -> PlaceBid:
    return PlaceBid(actor, f"{actor}-{amount_cents}", amount_cents, lot)


# --- Host ------------------------------------------------------------------


def test_claim_host_when_free_emits_host_changed():
    auction = Auction()

    decision = accept(auction, ClaimHost(HOST, "1"))

    assert decision.events == (HostChanged(1, T0, HOST),)
    assert auction.host == HOST


def test_claim_host_by_current_host_is_accepted_without_event():
    auction = hosted()

    decision = accept(auction, ClaimHost(HOST, "again"))

    assert decision.events == ()
    assert decision.result == {"host": HOST}
    assert auction.last_seq == 1


def test_claim_host_when_someone_else_is_host_is_host_taken():
    assert reject(hosted(), ClaimHost("mallory", "1")) == "host_taken"


def test_release_host_clears_the_host():
    auction = hosted()

    decision = accept(auction, ReleaseHost(HOST, "1"))

    assert decision.events == (HostChanged(2, T0, None),)
    assert auction.host is None


@pytest.mark.parametrize(
    "command",
    [
        ReleaseHost("ann", "1"),
        OpenLot("ann", "1", "Vase", 100, 60),
        CloseLot("ann", "1"),
        PauseLot("ann", "1"),
        ResumeLot("ann", "1"),
        SetIncrement("ann", "1", 50),
    ],
    ids=lambda command: type(command).__name__,
)
def test_host_command_from_a_non_host_is_not_host(command):
    assert reject(opened(), command) == "not_host"


# --- Opening ---------------------------------------------------------------


def test_first_lot_is_number_one_and_ends_after_its_duration():
    auction = opened()

    lot = auction.lot
    assert lot is not None
    assert (lot.number, lot.state, lot.ends_at_ms) == (1, LotState.OPEN, END)
    assert auction.deadline_ms() == END


def test_open_fills_in_the_default_increment_and_extension():
    decision = accept(hosted(), OpenLot(HOST, "1", "Vase", 500, 30))

    assert decision.events == (
        LotOpened(2, T0, 1, "Vase", 500, 100, T0 + 30_000, 10, False),
    )
    assert decision.result == {"lot": 1, "ends_at_ms": T0 + 30_000, "seq": 2}


def test_open_while_a_lot_is_open_is_lot_open():
    assert reject(opened(), OpenLot(HOST, "2", "Vase", 500, 30)) == "lot_open"


def test_open_while_a_lot_is_paused_is_lot_open():
    auction = opened()
    accept(auction, PauseLot(HOST, "p"))

    assert reject(auction, OpenLot(HOST, "2", "Vase", 500, 30)) == "lot_open"


def test_open_after_a_closed_lot_numbers_the_next_lot():
    auction = opened()
    accept(auction, CloseLot(HOST, "c"))

    accept(auction, OpenLot(HOST, "2", "Vase", 500, 30), T0 + 1_000)

    assert auction.lot is not None and auction.lot.number == 2


def test_open_after_the_deadline_before_tick_is_lot_open():
    assert reject(opened(), OpenLot(HOST, "2", "Vase", 500, 30), END) == "lot_open"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"title": ""}, "invalid_request"),
        ({"title": "x" * 201}, "invalid_request"),
        ({"duration_s": 0}, "invalid_request"),
        ({"duration_s": 86401}, "invalid_request"),
        ({"duration_s": True}, "invalid_request"),
        ({"extension_s": 0}, "invalid_request"),
        ({"extension_s": 3601}, "invalid_request"),
        ({"sudden_death": "yes"}, "invalid_request"),
        ({"starting_price_cents": 0}, "invalid_amount"),
        ({"starting_price_cents": -100}, "invalid_amount"),
        ({"starting_price_cents": MAX_CENTS + 1}, "invalid_amount"),
        ({"increment_cents": 0}, "invalid_amount"),
    ],
    ids=repr,
)
def test_open_with_an_invalid_field_is_refused(changes, reason):
    fields = {"title": "Vase", "starting_price_cents": 500, "duration_s": 30}

    command = OpenLot(HOST, "1", **{**fields, **changes})

    assert reject(hosted(), command) == reason


def test_open_accepts_every_field_at_its_limit():
    command = OpenLot(HOST, "1", "x" * 200, MAX_CENTS, 86400, MAX_CENTS, True, 3600)

    accept(hosted(), command)


# --- Bidding ---------------------------------------------------------------


def test_bid_before_any_lot_is_no_lot():
    assert reject(hosted(), bid("ann", 1000)) == "no_lot"


def test_first_bid_below_the_starting_price_is_too_low():
    auction = opened()

    decision = auction.handle(bid("ann", 999), T0)

    assert (decision.reason, decision.message) == ("bid_too_low", "bid at least 10.00")


def test_first_bid_at_the_starting_price_leads():
    auction = opened()

    decision = accept(auction, bid("ann", 1000), T0 + 1)

    assert decision.result == {"lot": 1, "amount": "10.00", "seq": 3}
    assert decision.events == (
        BidPlaced(3, T0 + 1, 1, "ann", 1000, END, 1, "ann-1000"),
    )
    assert (auction.lot.price_cents, auction.lot.leader) == (1000, "ann")


def test_later_bid_must_reach_price_plus_increment():
    auction = opened(increment_cents=250)
    accept(auction, bid("ann", 1000))

    decision = auction.handle(bid("bob", 1249), T0)

    assert (decision.reason, decision.message) == ("bid_too_low", "bid at least 12.50")
    accept(auction, bid("bob", 1250))


def test_bid_equal_to_the_price_loses_to_the_earlier_bid():
    auction = opened()
    accept(auction, bid("ann", 1500))

    assert reject(auction, bid("bob", 1500)) == "bid_too_low"
    assert auction.lot.leader == "ann"


def test_the_leader_cannot_bid_again():
    auction = opened()
    accept(auction, bid("ann", 1000))

    assert reject(auction, bid("ann", 5000)) == "already_leading"


def test_the_host_cannot_bid_on_the_lot():
    assert reject(opened(), bid(HOST, 1000)) == "not_allowed"


def test_bid_naming_another_lot_is_wrong_lot():
    assert reject(opened(), bid("ann", 1000, lot=2)) == "wrong_lot"


def test_bid_naming_a_lot_with_a_non_number_is_invalid_request():
    assert reject(opened(), bid("ann", 1000, lot=True)) == "invalid_request"


def test_bid_naming_the_current_lot_is_accepted():
    accept(opened(), bid("ann", 1000, lot=1))


def test_bid_while_paused_is_lot_paused():
    auction = opened()
    accept(auction, PauseLot(HOST, "p"))

    assert reject(auction, bid("ann", 1000)) == "lot_paused"


def test_bid_after_close_is_lot_closed():
    auction = opened()
    accept(auction, CloseLot(HOST, "c"))

    assert reject(auction, bid("ann", 1000)) == "lot_closed"


def test_bid_at_the_deadline_is_lot_closed_even_before_tick():
    assert reject(opened(), bid("ann", 1000), END) == "lot_closed"


def test_bid_one_ms_before_the_deadline_is_accepted():
    accept(opened(), bid("ann", 1000), END - 1)


@pytest.mark.parametrize("amount", [0, -5, MAX_CENTS + 1, True, 10.0], ids=repr)
def test_bid_with_an_impossible_amount_is_invalid_amount(amount):
    assert reject(opened(), bid("ann", amount)) == "invalid_amount"


def test_overtaken_leader_is_reported_as_outbid():
    auction = opened()
    first = accept(auction, bid("ann", 1000))

    second = accept(auction, bid("bob", 1100))

    assert (first.outbid, second.outbid) == (None, "ann")


# --- Soft close ------------------------------------------------------------


def test_bid_inside_the_extension_window_pushes_the_end_out():
    auction = opened()
    now = END - 4_000

    decision = accept(auction, bid("ann", 1000), now)

    assert decision.events == (
        BidPlaced(3, now, 1, "ann", 1000, now + 10_000, 1, "ann-1000"),
        LotExtended(4, now, 1, now + 10_000),
    )
    assert decision.result["seq"] == 3
    assert auction.deadline_ms() == now + 10_000


def test_bid_with_exactly_the_extension_left_does_not_extend():
    auction = opened()

    decision = accept(auction, bid("ann", 1000), END - 10_000)

    assert len(decision.events) == 1
    assert auction.deadline_ms() == END


def test_a_rejected_bid_never_extends():
    auction = opened()
    accept(auction, bid("ann", 1000), END - 20_000)

    reject(auction, bid("bob", 1000), END - 1_000)

    assert auction.deadline_ms() == END


def test_sudden_death_lot_never_extends():
    auction = opened(sudden_death=True)

    decision = accept(auction, bid("ann", 1000), END - 1)

    assert len(decision.events) == 1
    assert auction.deadline_ms() == END


def test_extension_s_sets_the_soft_close_window():
    auction = opened(extension_s=30)

    accept(auction, bid("ann", 1000), END - 29_000)

    assert auction.deadline_ms() == END - 29_000 + 30_000


# --- Pause and resume ------------------------------------------------------


def test_pause_keeps_the_time_that_was_left():
    auction = opened()

    decision = accept(auction, PauseLot(HOST, "p"), T0 + 15_000)

    assert decision.events == (LotPaused(3, T0 + 15_000, 1, 45_000, "host"),)
    assert (auction.lot.state, auction.lot.remaining_ms) == (LotState.PAUSED, 45_000)
    assert auction.deadline_ms() is None


def test_resume_ends_the_remaining_time_from_now():
    auction = opened()
    accept(auction, PauseLot(HOST, "p"), T0 + 15_000)

    decision = accept(auction, ResumeLot(HOST, "r"), T0 + 500_000)

    assert decision.events == (LotResumed(4, T0 + 500_000, 1, T0 + 545_000),)
    assert auction.deadline_ms() == T0 + 545_000


def test_pause_while_paused_is_lot_paused():
    auction = opened()
    accept(auction, PauseLot(HOST, "p"))

    assert reject(auction, PauseLot(HOST, "p2")) == "lot_paused"


def test_pause_without_a_lot_is_no_lot():
    assert reject(hosted(), PauseLot(HOST, "p")) == "no_lot"


def test_pause_after_close_is_lot_closed():
    auction = opened()
    accept(auction, CloseLot(HOST, "c"))

    assert reject(auction, PauseLot(HOST, "p")) == "lot_closed"


def test_pause_after_the_deadline_before_tick_is_lot_closed():
    assert reject(opened(), PauseLot(HOST, "p"), END) == "lot_closed"


def test_resume_when_not_paused_is_not_paused():
    assert reject(opened(), ResumeLot(HOST, "r")) == "not_paused"


def test_tick_leaves_a_paused_lot_alone():
    auction = opened()
    accept(auction, PauseLot(HOST, "p"))

    assert auction.tick(END + 1_000_000) == ()


# --- Closing ---------------------------------------------------------------


def test_close_sells_to_the_leader_at_the_price():
    auction = opened()
    accept(auction, bid("ann", 1000))
    accept(auction, bid("bob", 1200))

    decision = accept(auction, CloseLot(HOST, "c"), T0 + 5)

    assert decision.events == (LotClosed(5, T0 + 5, 1, "sold", "bob", 1200, 2),)
    assert decision.result == {
        "lot": 1,
        "outcome": "sold",
        "winner": "bob",
        "price": "12.00",
        "seq": 5,
    }


def test_close_without_bids_passes_the_lot():
    decision = accept(opened(), CloseLot(HOST, "c"))

    assert decision.events == (LotClosed(3, T0, 1, "passed", None, None, 0),)


def test_close_a_paused_lot():
    auction = opened()
    accept(auction, PauseLot(HOST, "p"))

    accept(auction, CloseLot(HOST, "c"))

    assert auction.lot.state is LotState.CLOSED


def test_close_without_a_lot_is_no_lot():
    assert reject(hosted(), CloseLot(HOST, "c")) == "no_lot"


def test_close_twice_is_lot_closed():
    auction = opened()
    accept(auction, CloseLot(HOST, "c"))

    assert reject(auction, CloseLot(HOST, "c2")) == "lot_closed"


def test_close_after_the_deadline_before_tick_is_lot_closed():
    assert reject(opened(), CloseLot(HOST, "c"), END + 5) == "lot_closed"


def test_tick_closes_the_lot_stamped_with_its_deadline():
    auction = opened()
    accept(auction, bid("ann", 1000))

    events = auction.tick(END + 750)

    assert events == (LotClosed(4, END, 1, "sold", "ann", 1000, 1),)
    assert auction.lot.state is LotState.CLOSED
    assert auction.deadline_ms() is None


def test_tick_before_the_deadline_does_nothing():
    auction = opened()

    assert auction.tick(END - 1) == ()
    assert auction.last_seq == 2


# --- Increment -------------------------------------------------------------


def test_set_increment_changes_the_lot_and_the_default():
    auction = opened()
    accept(auction, bid("ann", 1000))

    decision = accept(auction, SetIncrement(HOST, "i", 500))

    assert decision.events == (IncrementChanged(4, T0, 1, 500),)
    assert decision.result == {"lot": 1, "increment": "5.00", "seq": 4}
    assert auction.lot.minimum_bid_cents == 1500
    assert auction.default_increment_cents == 500


def test_set_increment_without_a_running_lot_changes_only_the_default():
    auction = hosted()

    decision = accept(auction, SetIncrement(HOST, "i", 250))
    accept(auction, OpenLot(HOST, "o", "Vase", 100, 60))

    assert decision.events == (IncrementChanged(2, T0, None, 250),)
    assert auction.lot.increment_cents == 250


def test_set_increment_on_a_paused_lot():
    auction = opened()
    accept(auction, PauseLot(HOST, "p"))

    accept(auction, SetIncrement(HOST, "i", 700))

    assert auction.lot.increment_cents == 700


@pytest.mark.parametrize("amount", [0, -1, MAX_CENTS + 1])
def test_set_increment_must_be_a_positive_amount(amount):
    assert reject(opened(), SetIncrement(HOST, "i", amount)) == "invalid_amount"


# --- Chat ------------------------------------------------------------------


def test_chat_posts_an_event_from_the_actor():
    decision = accept(Auction(), PostChat("ann", "m", "hello"))

    assert decision.events == (ChatPosted(1, T0, "ann", "hello", "m"),)


def test_a_posted_message_is_found_by_its_author_and_request_id():
    auction = Auction()
    accept(auction, PostChat("ann", "m1", "hello"))

    assert auction.accepted_chat("ann", "m1").text == "hello"
    assert auction.accepted_chat("bob", "m1") is None
    assert auction.accepted_chat("ann", "m2") is None


def test_only_the_latest_chat_requests_are_remembered():
    auction = Auction(Rules(chats_remembered=2))
    for number in range(3):
        accept(auction, PostChat("ann", f"m{number}", "hi"))

    assert auction.accepted_chat("ann", "m0") is None
    assert auction.accepted_chat("ann", "m2") is not None


def test_chat_history_keeps_only_the_latest_messages():
    auction = Auction(Rules(chat_history=2))
    for n in range(3):
        accept(auction, PostChat("ann", str(n), f"message {n}"))

    texts = [chat["text"] for chat in auction.snapshot(T0)["chat"]]

    assert texts == ["message 1", "message 2"]


@pytest.mark.parametrize("text", ["", "x" * 501])
def test_chat_empty_or_too_long_is_invalid_text(text):
    assert reject(Auction(), PostChat("ann", "m", text)) == "invalid_text"


# --- Wire shape of events --------------------------------------------------

EXAMPLES = [
    (
        LotOpened(1, T0, 3, "Guitar", 10050, 500, T0 + 60_000, 10, False),
        {
            "type": "lot_opened",
            "seq": 1,
            "at_ms": T0,
            "lot": 3,
            "title": "Guitar",
            "starting_price": "100.50",
            "increment": "5.00",
            "ends_at_ms": T0 + 60_000,
            "extension_s": 10,
            "sudden_death": False,
        },
    ),
    (
        BidPlaced(58, T0, 3, "ann", 1250, T0 + 9_000, 4, "b-17"),
        {
            "type": "bid",
            "seq": 58,
            "at_ms": T0,
            "lot": 3,
            "bidder": "ann",
            "amount": "12.50",
            "ends_at_ms": T0 + 9_000,
            "bid_count": 4,
            "request_id": "b-17",
        },
    ),
    (
        LotExtended(59, T0, 3, T0 + 10_000),
        {
            "type": "lot_extended",
            "seq": 59,
            "at_ms": T0,
            "lot": 3,
            "ends_at_ms": T0 + 10_000,
        },
    ),
    (
        LotPaused(60, T0, 3, 4_500, "recovered"),
        {
            "type": "lot_paused",
            "seq": 60,
            "at_ms": T0,
            "lot": 3,
            "remaining_ms": 4_500,
            "reason": "recovered",
        },
    ),
    (
        LotResumed(61, T0, 3, T0 + 4_500),
        {
            "type": "lot_resumed",
            "seq": 61,
            "at_ms": T0,
            "lot": 3,
            "ends_at_ms": T0 + 4_500,
        },
    ),
    (
        IncrementChanged(62, T0, None, 1),
        {
            "type": "increment_changed",
            "seq": 62,
            "at_ms": T0,
            "lot": None,
            "increment": "0.01",
        },
    ),
    (
        LotClosed(63, T0, 3, "sold", "ann", 100_000_000_000, 4),
        {
            "type": "lot_closed",
            "seq": 63,
            "at_ms": T0,
            "lot": 3,
            "outcome": "sold",
            "winner": "ann",
            "price": "1000000000.00",
            "bid_count": 4,
        },
    ),
    (
        LotClosed(64, T0, 4, "passed", None, None, 0),
        {
            "type": "lot_closed",
            "seq": 64,
            "at_ms": T0,
            "lot": 4,
            "outcome": "passed",
            "winner": None,
            "price": None,
            "bid_count": 0,
        },
    ),
    (
        ChatPosted(65, T0, "bob", "nice guitar", "m9"),
        {
            "type": "chat",
            "seq": 65,
            "at_ms": T0,
            "author": "bob",
            "text": "nice guitar",
            "request_id": "m9",
        },
    ),
    (
        HostChanged(66, T0, None),
        {"type": "host_changed", "seq": 66, "at_ms": T0, "host": None},
    ),
]


@pytest.mark.parametrize(("event", "wire"), EXAMPLES, ids=lambda x: type(x).__name__)
def test_event_to_dict_gives_the_protocol_shape(event, wire):
    assert event_to_dict(event) == wire


@pytest.mark.parametrize(("event", "wire"), EXAMPLES, ids=lambda x: type(x).__name__)
def test_event_from_dict_inverts_event_to_dict(event, wire):
    assert event_from_dict(wire) == event


def test_every_event_type_matches_the_protocol_events_table():
    """Guards against drift between docs/protocol.md and the event classes."""
    section = PROTOCOL.read_text().split("## Events", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for row in re.findall(r"^\| `(\w+)` \| (.+) \|$", section, re.MULTILINE):
        name, cells = row
        names = re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", cells))
        documented[name] = {"type", "seq", "at_ms", *names}

    built = {wire["type"]: set(wire) for _, wire in EXAMPLES}

    assert built == documented


def test_event_from_dict_accepts_short_decimals():
    wire = {**EXAMPLES[1][1], "amount": "12.5"}

    assert event_from_dict(wire).amount_cents == 1250


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"type": "bids"}, "unknown event type"),
        ({"request_id": None}, "request_id may not be null"),
        ({"seq": "58"}, "seq has the wrong type"),
        ({"seq": 0}, "seq must be at least 1"),
        ({"bid_count": True}, "bid_count has the wrong type"),
        ({"amount": 12.5}, "amount"),
        ({"amount": "1e3"}, "amount"),
        ({"amount": "12.505"}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"extra": 1}, "unknown extra"),
    ],
    ids=repr,
)
def test_event_from_dict_refuses_a_malformed_event(change, message):
    wire = {**EXAMPLES[1][1], **change}

    with pytest.raises(ValueError, match=message):
        event_from_dict(wire)


def test_event_from_dict_names_a_missing_field():
    wire = dict(EXAMPLES[1][1])
    del wire["bidder"]

    with pytest.raises(ValueError, match="missing bidder"):
        event_from_dict(wire)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ({**EXAMPLES[3][1], "reason": "bored"}, "reason may not be 'bored'"),
        ({**EXAMPLES[6][1], "outcome": "stolen"}, "outcome may not be 'stolen'"),
        ({**EXAMPLES[0][1], "sudden_death": 0}, "sudden_death has the wrong type"),
    ],
    ids=repr,
)
def test_event_from_dict_refuses_values_outside_their_type(wire, message):
    with pytest.raises(ValueError, match=message):
        event_from_dict(wire)


# --- Replay ----------------------------------------------------------------


def test_apply_refuses_a_gap_in_seq():
    with pytest.raises(ValueError, match="seq 2 does not follow 0"):
        Auction().apply(ChatPosted(2, T0, "ann", "hi", "m"))


def test_apply_refuses_an_impossible_transition():
    with pytest.raises(ValueError, match="bid is impossible with no lot"):
        Auction().apply(BidPlaced(1, T0, 1, "ann", 1000, END, 1, "b"))


def test_apply_refuses_a_bid_below_the_minimum_and_changes_nothing():
    auction = opened()
    before = auction.snapshot(T0)

    with pytest.raises(ValueError, match="below the minimum"):
        auction.apply(BidPlaced(3, T0, 1, "ann", 999, END, 1, "b"))

    assert (auction.snapshot(T0), auction.last_seq) == (before, 2)


def test_apply_refuses_a_close_that_misstates_the_winner():
    auction = opened()
    accept(auction, bid("ann", 1000))

    with pytest.raises(ValueError, match="does not match"):
        auction.apply(LotClosed(4, T0, 1, "sold", "bob", 1000, 1))


def test_auction_resumed_at_a_seq_numbers_events_after_it():
    auction = Auction(last_seq=41)

    decision = accept(auction, PostChat("ann", "m", "back"))

    assert decision.events[0].seq == 42


# --- Recovery after a restart ----------------------------------------------


def test_recover_pauses_an_open_lot_with_the_time_left_at_the_last_record():
    auction = opened()

    events = auction.recover(now_ms=END + 600_000, last_record_at_ms=T0 + 20_000)

    assert events[0] == LotPaused(3, END + 600_000, 1, 40_000, "recovered")
    assert auction.lot.state is LotState.PAUSED


def test_recover_closes_a_lot_whose_deadline_passed_while_running():
    auction = opened()
    accept(auction, bid("ann", 1000))

    events = auction.recover(now_ms=END + 600_000, last_record_at_ms=END)

    assert events[0] == LotClosed(4, END, 1, "sold", "ann", 1000, 1)


def test_recover_releases_the_host():
    auction = hosted()

    events = auction.recover(now_ms=T0 + 5, last_record_at_ms=T0)

    assert events == (HostChanged(2, T0 + 5, None),)
    assert auction.host is None


def test_recover_leaves_a_paused_lot_paused():
    auction = opened()
    accept(auction, PauseLot(HOST, "p"), T0 + 1_000)
    accept(auction, ReleaseHost(HOST, "r"))

    assert auction.recover(now_ms=END * 2, last_record_at_ms=END * 2) == ()
    assert auction.lot.remaining_ms == 59_000


def test_recovered_lot_resumes_with_the_time_it_had_left():
    auction = opened()
    auction.recover(now_ms=END + 600_000, last_record_at_ms=T0 + 20_000)
    accept(auction, ClaimHost(HOST, "again"), END + 700_000)

    accept(auction, ResumeLot(HOST, "r"), END + 700_000)

    assert auction.deadline_ms() == END + 700_000 + 40_000


# --- Snapshot --------------------------------------------------------------


def test_snapshot_before_any_lot():
    assert Auction().snapshot(T0) == {
        "seq": 0,
        "lot": None,
        "host": None,
        "chat": [],
        "results": [],
    }


def test_snapshot_of_an_open_lot_with_a_leader():
    auction = opened()
    accept(auction, bid("ann", 1000))
    accept(auction, PostChat("bob", "m", "go on"))

    snapshot = auction.snapshot(T0)

    assert snapshot["seq"] == 4 and snapshot["host"] == HOST
    assert snapshot["lot"] == {
        "lot": 1,
        "title": "Guitar",
        "state": "open",
        "starting_price": "10.00",
        "increment": "1.00",
        "price": "10.00",
        "leader": "ann",
        "bid_count": 1,
        "ends_at_ms": END,
        "extension_s": 10,
        "sudden_death": False,
    }
    assert snapshot["chat"] == [
        {
            "type": "chat",
            "seq": 4,
            "at_ms": T0,
            "author": "bob",
            "text": "go on",
            "request_id": "m",
        }
    ]


def test_snapshot_of_a_paused_lot_has_remaining_ms_and_no_deadline():
    auction = opened()
    accept(auction, PauseLot(HOST, "p"), T0 + 10_000)

    lot = auction.snapshot(T0)["lot"]

    assert (lot["state"], lot["ends_at_ms"], lot["remaining_ms"]) == (
        "paused",
        None,
        50_000,
    )


def test_snapshot_of_a_closed_lot_has_its_outcome():
    auction = opened()
    accept(auction, CloseLot(HOST, "c"), T0 + 3)

    lot = auction.snapshot(T0)["lot"]

    assert (lot["state"], lot["outcome"], lot["ends_at_ms"]) == (
        "closed",
        "passed",
        T0 + 3,
    )


def test_snapshot_results_keep_only_the_latest_lots():
    auction = Auction(Rules(results_history=2))
    accept(auction, ClaimHost(HOST, "h"))
    for n in range(3):
        accept(auction, OpenLot(HOST, f"o{n}", f"Lot {n}", 100, 60))
        accept(auction, CloseLot(HOST, f"c{n}"))

    results = auction.snapshot(T0)["results"]

    assert [result["lot"] for result in results] == [2, 3]


# --- Idempotency and names -------------------------------------------------


def test_accepted_bid_is_found_by_actor_and_request_id():
    auction = opened()
    placed = accept(auction, PlaceBid("ann", "b-1", 1000)).events[0]

    assert auction.accepted_bid("ann", "b-1") == placed
    assert auction.accepted_bid("bob", "b-1") is None
    assert auction.accepted_bid("ann", "b-2") is None


def test_accepted_bid_remembers_the_previous_lot():
    auction = opened()
    accept(auction, PlaceBid("ann", "b-1", 1000))
    accept(auction, CloseLot(HOST, "c"))
    accept(auction, OpenLot(HOST, "o2", "Vase", 100, 60))

    assert auction.accepted_bid("ann", "b-1") is not None


def test_accepted_bid_forgets_bids_two_lots_back():
    auction = opened()
    accept(auction, PlaceBid("ann", "b-1", 1000))
    for n in (2, 3):
        accept(auction, CloseLot(HOST, f"c{n}"))
        accept(auction, OpenLot(HOST, f"o{n}", "Vase", 100, 60))

    assert auction.accepted_bid("ann", "b-1") is None


def test_accepted_bid_survives_a_replay_of_the_journal():
    live, journal = Auction(), []
    for command in (
        ClaimHost(HOST, "h"),
        OpenLot(HOST, "o", "Guitar", 1000, 60),
        PlaceBid("ann", "b-1", 1000),
    ):
        journal += [event_to_dict(e) for e in accept(live, command).events]

    replayed = Auction()
    for record in journal:
        replayed.apply(event_from_dict(record))

    assert replayed.accepted_bid("ann", "b-1") == live.accepted_bid("ann", "b-1")


def test_has_participated_after_a_bid_or_a_chat_only():
    auction = opened()
    accept(auction, bid("ann", 1000))
    accept(auction, PostChat("bob", "m", "hi"))

    assert auction.has_participated("ann") and auction.has_participated("bob")
    assert not auction.has_participated("carol")
    assert not auction.has_participated(HOST)


# --- Rules -----------------------------------------------------------------


def test_rules_refuse_a_non_positive_default_increment():
    with pytest.raises(ValueError, match="default_increment_cents"):
        Rules(default_increment_cents=0)
