"""DESIGN.md's invariants, checked over random command sequences (bidwar.core).

A hypothesis state machine drives one Auction with random commands, clock
steps, ticks (sometimes skipped, as a forgetful server would) and restarts,
and after every step checks the invariants against a small model of the
accepted bids and against a fresh Auction rebuilt from the journal.
"""

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from bidwar.core import (
    Auction,
    ClaimHost,
    CloseLot,
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
from bidwar.money import MAX_CENTS, parse_amount

T0 = 1_764_777_600_000
RULES = Rules(chat_history=4, results_history=2)
ACTORS = ("hal", "ann", "bob", "cat")

# docs/protocol.md's reasons the core can give, plus the core's own not_allowed.
CORE_REASONS = {
    "invalid_request",
    "invalid_amount",
    "invalid_text",
    "host_taken",
    "not_host",
    "no_lot",
    "lot_open",
    "lot_closed",
    "lot_paused",
    "not_paused",
    "wrong_lot",
    "bid_too_low",
    "already_leading",
    "not_allowed",
}

# Host commands come mostly from "hal", so that lots actually open; anyone
# may still try, to exercise not_host.  Values stray out of range now and then.
actors = st.sampled_from(ACTORS)
host_actors = st.sampled_from(("hal", "hal", "hal", "ann"))
# "host" stands for whoever is the host at that moment (or hal when nobody is).
host_or_other = st.sampled_from(("host", "host", "host", *ACTORS))
bidders = st.sampled_from(("ann", "bob", "cat", "hal"))
durations_s = st.integers(0, 40)
optional_increment = st.one_of(st.none(), st.integers(0, 500))
optional_extension = st.one_of(st.none(), st.integers(0, 15))
# None (most of the time) means "relative to the current minimum".
absolute_amounts = st.sampled_from([None] * 8 + [-5, 0, 1_000, 2_500, MAX_CENTS + 1])
# Amounts right at the minimum matter most, so they are drawn often.
bid_offsets = st.one_of(st.sampled_from([-1, 0, 1]), st.integers(-150, 300))
clock_steps_ms = st.one_of(st.integers(0, 2_000), st.integers(0, 40_000))


class AuctionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.auction = Auction(RULES)
        self.now_ms = T0
        self.journal: list[dict] = []
        self.request_ids = (f"r{n}" for n in itertools.count())

        # Fed every journal record once, through the wire shape, as a
        # replaying server would be; cheaper than a full replay per step.
        self.mirror = Auction(RULES)
        self.mirrored = 0

        # The model: every accepted bid per lot, in acceptance order.
        self.bids: dict[int, list[tuple[int, str]]] = {}
        self.last_price: dict[int, int] = {}

    # --- Driving ---

    def as_actor(self, who: str) -> str:
        """Resolve "host" to the current host, making hal host when nobody is."""
        if who != "host":
            return who
        if self.auction.host is None:
            self.handle(lambda rid: ClaimHost("hal", rid), tick_first=False)
        return self.auction.host

    def handle(self, make_command, tick_first: bool):
        """Handle a command built with a fresh request id and check the
        properties that hold for any single command."""
        if tick_first:
            self.record(self.auction.tick(self.now_ms))
        command = make_command(next(self.request_ids))
        before = self.observe()

        decision = self.auction.handle(command, self.now_ms)

        if decision.accepted:
            assert decision.reason is None
            self.record(decision.events)
        else:
            assert decision.reason in CORE_REASONS, decision
            assert decision.events == ()
            assert self.observe() == before, "a rejected command changed the state"
        return decision

    def record(self, events) -> None:
        for event in events:
            self.journal.append(event_to_dict(event))

    def observe(self):
        auction = self.auction
        return (
            auction.snapshot(self.now_ms),
            auction.last_seq,
            auction.lot,
            auction.default_increment_cents,
            auction.deadline_ms(),
        )

    # --- Rules ---

    @initialize(
        open_first=st.booleans(),
        duration_s=st.integers(1, 40),
        sudden_death=st.booleans(),
    )
    def start(self, open_first, duration_s, sudden_death):
        """Begin with hal as host and, usually, lot 1 already open."""
        self.handle(lambda rid: ClaimHost("hal", rid), tick_first=False)
        if open_first:
            decision = self.handle(
                lambda rid: OpenLot(
                    "hal", rid, "lot", 1_000, duration_s, None, sudden_death
                ),
                tick_first=False,
            )
            assert decision.accepted

    @rule(step_ms=clock_steps_ms)
    def advance_clock(self, step_ms):
        self.now_ms += step_ms

    @precondition(lambda self: self.auction.deadline_ms() is not None)
    @rule(offset_ms=st.sampled_from([-1, 0, 1]))
    def jump_to_the_deadline(self, offset_ms):
        """The boundary where late bids start: one ms before, at, and after."""
        self.now_ms = max(self.now_ms, self.auction.deadline_ms() + offset_ms)

    @rule()
    def tick(self):
        self.record(self.auction.tick(self.now_ms))

        deadline = self.auction.deadline_ms()
        assert deadline is None or deadline > self.now_ms

    @rule(actor=host_actors, tick_first=st.booleans())
    def claim_host(self, actor, tick_first):
        self.handle(lambda rid: ClaimHost(actor, rid), tick_first)

    @rule(who=host_or_other, tick_first=st.booleans())
    def release_host(self, who, tick_first):
        actor = self.as_actor(who)
        self.handle(lambda rid: ReleaseHost(actor, rid), tick_first)

    @rule(
        who=host_or_other,
        tick_first=st.booleans(),
        start=st.integers(0, 2_000),
        duration_s=durations_s,
        increment=optional_increment,
        sudden_death=st.booleans(),
        extension_s=optional_extension,
    )
    def open_lot(
        self, who, tick_first, start, duration_s, increment, sudden_death, extension_s
    ):
        actor = self.as_actor(who)

        def command(rid):
            return OpenLot(
                actor,
                rid,
                "lot",
                start,
                duration_s,
                increment,
                sudden_death,
                extension_s,
            )

        self.handle(command, tick_first)

    @rule(
        who=host_or_other,
        tick_first=st.booleans(),
        kind=st.sampled_from([CloseLot, PauseLot, ResumeLot]),
    )
    def lot_control(self, who, tick_first, kind):
        actor = self.as_actor(who)
        self.handle(lambda rid: kind(actor, rid), tick_first)

    @rule(who=host_or_other, tick_first=st.booleans(), amount=st.integers(-1, 500))
    def set_increment(self, who, tick_first, amount):
        actor = self.as_actor(who)
        self.handle(lambda rid: SetIncrement(actor, rid, amount), tick_first)

    @rule(actor=actors, tick_first=st.booleans(), text=st.text(max_size=3))
    def post_chat(self, actor, tick_first, text):
        self.handle(lambda rid: PostChat(actor, rid, text), tick_first)

    @rule(
        actor=bidders,
        tick_first=st.booleans(),
        offset=bid_offsets,
        absolute=absolute_amounts,
        lot_shift=st.one_of(st.none(), st.integers(-1, 1)),
    )
    def place_bid(self, actor, tick_first, offset, absolute, lot_shift):
        """Bid near the current minimum (or now and then an absolute amount)."""
        if tick_first:
            self.record(self.auction.tick(self.now_ms))
        lot, host = self.auction.lot, self.auction.host
        minimum = lot.minimum_bid_cents if lot else 1_000
        amount = minimum + offset if absolute is None else absolute
        named = None if lot_shift is None or lot is None else lot.number + lot_shift

        decision = self.handle(
            lambda rid: PlaceBid(actor, rid, amount, named), tick_first=False
        )

        allowed = (
            lot is not None
            and lot.state is LotState.OPEN
            and self.now_ms < lot.ends_at_ms
            and named in (None, lot.number)
            and actor not in (lot.leader, host)
            and lot.minimum_bid_cents <= amount <= MAX_CENTS
        )
        assert decision.accepted == allowed, (decision, lot, amount)
        if decision.accepted:
            self.bids.setdefault(lot.number, []).append((amount, actor))
            assert decision.outbid == lot.leader

    @precondition(lambda self: self.auction.deadline_ms() is not None)
    @rule(
        actor=bidders,
        tick_first=st.booleans(),
        offset=bid_offsets,
        lot_shift=st.none(),
        absolute=st.none(),
    )
    def bid_while_running(self, actor, tick_first, offset, lot_shift, absolute):
        """Extra weight for bids on an OPEN lot, where the rules have most to do."""
        self.place_bid(actor, tick_first, offset, absolute, lot_shift)

    @precondition(lambda self: self.journal)
    @rule(down_ms=st.integers(0, 100_000), alive_until_now=st.booleans())
    def restart(self, down_ms, alive_until_now):
        """Crash and restart: rebuild from the journal, then recover.

        The server was alive at least until its last record, or (say, from
        a heartbeat) until the current time."""
        last_record_at_ms = (
            self.now_ms if alive_until_now else self.journal[-1]["at_ms"]
        )
        self.auction = self.replay()
        self.now_ms += down_ms

        self.record(self.auction.recover(self.now_ms, last_record_at_ms))

        assert self.auction.host is None
        assert self.auction.deadline_ms() is None

    def replay(self) -> Auction:
        rebuilt = Auction(RULES)
        for record in self.journal:
            rebuilt.apply(event_from_dict(record))
        return rebuilt

    # --- Invariants ---

    @invariant()
    def seqs_are_contiguous(self):
        seqs = [record["seq"] for record in self.journal]
        assert seqs == list(range(1, len(seqs) + 1))
        assert self.auction.last_seq == len(seqs)

    @invariant()
    def price_never_decreases_within_a_lot(self):
        lot = self.auction.lot
        if lot is None or lot.price_cents is None:
            return
        assert lot.price_cents >= self.last_price.get(lot.number, 0)
        self.last_price[lot.number] = lot.price_cents

    @invariant()
    def leader_is_the_earliest_of_the_highest_bids(self):
        lot = self.auction.lot
        if lot is None:
            return
        bids = self.bids.get(lot.number, [])
        if not bids:
            assert (lot.price_cents, lot.leader) == (None, None)
            return
        highest = max(amount for amount, _ in bids)
        earliest = next(bidder for amount, bidder in bids if amount == highest)
        assert (lot.price_cents, lot.leader) == (highest, earliest)

    @invariant()
    def snapshot_history_is_the_tail_of_the_journal(self):
        snapshot = self.auction.snapshot(self.now_ms)
        chats = [r for r in self.journal if r["type"] == "chat"]
        results = [r for r in self.journal if r["type"] == "lot_closed"]
        increments = [r for r in self.journal if r["type"] == "increment_changed"]

        assert snapshot["chat"] == chats[-RULES.chat_history :]
        assert snapshot["results"] == results[-RULES.results_history :]
        expected = (
            parse_amount(increments[-1]["increment"])
            if increments
            else RULES.default_increment_cents
        )
        assert self.auction.default_increment_cents == expected

    @invariant()
    def replaying_the_journal_rebuilds_the_same_state(self):
        rebuilt = self.mirror
        for record in self.journal[self.mirrored :]:
            rebuilt.apply(event_from_dict(record))
        self.mirrored = len(self.journal)

        assert rebuilt.snapshot(self.now_ms) == self.auction.snapshot(self.now_ms)
        assert rebuilt.lot == self.auction.lot
        assert rebuilt.default_increment_cents == self.auction.default_increment_cents
        for name in ACTORS:
            assert rebuilt.has_participated(name) == self.auction.has_participated(name)


AuctionMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=35, deadline=None
)
TestAuctionInvariants = AuctionMachine.TestCase
