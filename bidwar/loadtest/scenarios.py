"""The load scenarios: what the lot looks like and what each bidder does.

A :class:`Scenario` is data; :func:`plan_bidders` turns it and the run's
figures into one :class:`BidderPlan` per bidder (deterministic for a seed),
which is all a worker process needs to know about a bidder.

* ``war``   — steady bidding at ``rate`` bids/s in total, each bid the known
  price + increment; ``bid_too_low`` races are expected and normal.
* ``snipe`` — a short soft-close lot with a trickle of bids and a burst in
  its last seconds, so accepted bids keep extending it.
* ``chat``  — a chat storm (two messages per offered bid) during a war.
* ``churn`` — a war where bidders keep dropping and resuming their session,
  re-sending unanswered requests with the same id.
* ``slow``  — a war where a share of bidders never read (or read slowly);
  they are reported apart from everyone else.
* ``idle``  — bidders join and only listen (server memory per connection).
"""

import dataclasses
import random
from typing import Any

from bidwar import money

# The server's per-connection limits (AuctionServiceConfig) are 10 bids/s and
# 2 chat messages/s; plans stay below them so that rate_limited means a bug.
MAX_BIDS_PER_BIDDER_S = 8.0
MAX_CHATS_PER_BIDDER_S = 1.5

STARTING_PRICE_CENTS = 1_000
INCREMENT_CENTS = 100


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    bids: bool = True
    chat_per_bid: float = 0.0
    churn: bool = False
    slow_readers: bool = False
    # Soft close the scenario relies on; None means the host closes the lot.
    natural_end: bool = False
    extension_s: int = 10
    # snipe: the last seconds of the original lot get the full rate, the time
    # before it a tenth; bidders stop after ``overtime_s`` past the original
    # end so that the extensions end by themselves.
    snipe_window_s: float = 0.0
    quiet_share: float = 1.0
    overtime_s: float = 0.0


SCENARIOS = {
    "war": Scenario("war"),
    "snipe": Scenario(
        "snipe", natural_end=True, extension_s=3, snipe_window_s=5.0,
        quiet_share=0.1, overtime_s=6.0,
    ),
    "chat": Scenario("chat", chat_per_bid=2.0),
    "churn": Scenario("churn", churn=True),
    "slow": Scenario("slow", slow_readers=True),
    "idle": Scenario("idle", bids=False),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class BidderPlan:
    """One bidder's part: its name and pacing (intervals in seconds)."""

    name: str
    slow: bool
    bid_interval_s: float | None
    chat_interval_s: float | None
    seed: int


def plan_bidders(
    scenario: Scenario, *, run_id: str, bidders: int, rate: float,
    slow_share: float, seed: int,
) -> list[BidderPlan]:  # fmt: skip
    """Spread ``rate`` bids/s over the bidders that read; pick the slow ones.

    Slow bidders send nothing (a client that does not read its replies would
    only measure its own backlog); the offered rate is shared by the others.
    """
    chooser = random.Random(seed)
    slow_count = round(bidders * slow_share) if scenario.slow_readers else 0
    slow = set(chooser.sample(range(bidders), slow_count))
    active = max(1, bidders - slow_count)

    bid_interval = _interval(
        active, rate if scenario.bids else 0, MAX_BIDS_PER_BIDDER_S
    )
    chat_rate = rate * scenario.chat_per_bid
    chat_interval = _interval(active, chat_rate, MAX_CHATS_PER_BIDDER_S)
    return [
        BidderPlan(
            name=f"{run_id}-{index}",
            slow=index in slow,
            bid_interval_s=None if index in slow else bid_interval,
            chat_interval_s=None if index in slow else chat_interval,
            seed=chooser.getrandbits(32),
        )
        for index in range(bidders)
    ]


def _interval(active: int, total_rate: float, per_bidder_cap: float) -> float | None:
    if total_rate <= 0:
        return None
    return 1 / min(total_rate / active, per_bidder_cap)


def open_request(scenario: Scenario, duration_s: float, run_id: str) -> dict[str, Any]:
    """The fields of the host's ``open`` request for this scenario's lot."""
    if scenario.natural_end:
        lot_s = max(1, round(duration_s))
    else:
        # Long enough never to end by itself: the host closes it on time.
        lot_s = round(duration_s) + 3_600
    return {
        "title": f"load test {run_id} ({scenario.name})",
        "starting_price": money.format_cents(STARTING_PRICE_CENTS),
        "duration_s": lot_s,
        "increment": money.format_cents(INCREMENT_CENTS),
        "extension_s": scenario.extension_s,
    }


def rate_share(scenario: Scenario, seconds_to_end: float | None) -> float:
    """The share of the full bid rate to offer this long before the lot ends."""
    if scenario.snipe_window_s <= 0 or seconds_to_end is None:
        return 1.0
    return 1.0 if seconds_to_end <= scenario.snipe_window_s else scenario.quiet_share


def bidding_window_s(scenario: Scenario, duration_s: float) -> float:
    """How long after the lot opens bidders keep bidding."""
    if scenario.natural_end:
        return duration_s + scenario.overtime_s
    return duration_s
