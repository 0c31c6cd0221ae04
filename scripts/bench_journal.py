"""How many bids per second the journal makes durable, and how long each waits.

    python scripts/bench_journal.py [--submitters 100] [--seconds 5] [--events N]

Three runs, each on a fresh journal in a temporary directory
(synchronous=FULL, so every commit waits for its fsync):

* **group commit, closed loop** (capacity): ``--submitters`` concurrent
  bidders, each placing a bid and waiting for its durable callback before
  the next, through one :class:`~bidwar.group_commit.GroupCommitter`;
* **group commit, open loop** (latency at a given load): bids offered at
  ``--rate`` per second whatever the latency, as independent clients would;
* **one commit per event**: the same events, each in its own transaction,
  one at a time (what the server would do without group commit).

Latency is measured from ``submit_nowait`` to the ``on_durable`` callback.
When :mod:`bidwar.core` is importable the bids are real ``PlaceBid``
commands judged by ``Auction.handle`` (the figure is *accepted* bids); with
``--synthetic`` or without the core, hand-built bid-sized events are used.
The output says which.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bidwar.group_commit import GroupCommitter  # noqa: E402
from bidwar.journal import SqliteStore  # noqa: E402

try:
    from bidwar import core
except ImportError:  # the core may not exist yet in a partial checkout
    core = None

T0_MS = 1_764_777_600_000


@dataclass
class Run:
    """What one benchmark run measured."""

    label: str
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    rejected: int = 0

    def line(self) -> str:
        count = len(self.latencies_s)
        rate = count / self.elapsed_s if self.elapsed_s else 0.0
        return (
            f"{self.label}: {count} durable in {self.elapsed_s:.2f} s ="
            f" {rate:,.0f}/s, latency p50 {percentile(self.latencies_s, 50):.2f} ms,"
            f" p99 {percentile(self.latencies_s, 99):.2f} ms,"
            f" max {percentile(self.latencies_s, 100):.2f} ms"
        )


def percentile(samples_s: list[float], pct: float) -> float:
    """Nearest-rank percentile of ``samples_s``, in milliseconds."""
    if not samples_s:
        return float("nan")
    ordered = sorted(samples_s)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1] * 1000


def synthetic_bid(seq: int, bidder: str) -> dict:
    """A bid event the size and shape of the real ones."""
    return {
        "type": "bid",
        "seq": seq,
        "at_ms": T0_MS + seq,
        "lot": 1,
        "bidder": bidder,
        "amount": f"{100 + seq}.00",
        "ends_at_ms": T0_MS + 3_600_000,
        "bid_count": seq,
        "request_id": f"{bidder}-{seq}",
    }


class SyntheticBids:
    """Numbers hand-built bid events, as the auction actor would."""

    description = "synthetic bid events (bidwar.core not used)"

    def __init__(self, last_seq: int) -> None:
        self._seq = last_seq

    def setup_events(self) -> list[dict]:
        return []

    def bid(self, bidder: str, request_id: str) -> list[dict] | None:
        self._seq += 1
        return [synthetic_bid(self._seq, bidder)]


class CoreBids:
    """Real PlaceBid commands through the rules engine; None when rejected."""

    description = "real PlaceBid commands through bidwar.core.Auction.handle"

    def __init__(self, last_seq: int) -> None:
        self._auction = core.Auction(last_seq=last_seq)

    def setup_events(self) -> list[dict]:
        now = now_ms()
        claim = self._auction.handle(core.ClaimHost("host", "h-1"), now)
        lot = self._auction.handle(
            core.OpenLot("host", "h-2", "Benchmark lot", 100, 86_400, 1), now
        )
        return [core.event_to_dict(e) for e in claim.events + lot.events]

    def bid(self, bidder: str, request_id: str) -> list[dict] | None:
        now = now_ms()
        self._auction.tick(now)
        amount = self._auction.lot.minimum_bid_cents
        command = core.PlaceBid(bidder, request_id, amount, lot=1)
        decision = self._auction.handle(command, now)
        if not decision.accepted:
            return None
        return [core.event_to_dict(event) for event in decision.events]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def make_source(store: SqliteStore, synthetic: bool):
    if synthetic or core is None or not hasattr(core, "Auction"):
        return SyntheticBids(store.last_seq)
    return CoreBids(store.last_seq)


async def bench_group_commit(
    store: SqliteStore, source, submitters: int, seconds: float, events: int
) -> tuple[Run, GroupCommitter]:
    run = Run(f"group commit, {submitters} submitters")
    committer = GroupCommitter(store)

    async def bidder(name: str) -> None:
        number = 0
        while len(run.latencies_s) < events:
            number += 1
            batch = source.bid(name, f"{name}-{number}")
            if batch is None:
                # Already leading: a rejection needs no journal write.
                run.rejected += 1
                await trio.lowlevel.checkpoint()
                continue

            # No checkpoint between numbering and submitting: the order of
            # submissions is the order of seqs, as in the real actor.
            done = trio.Event()
            started = time.perf_counter()

            def on_durable(error, started=started, done=done):
                if error is not None:
                    raise error
                run.latencies_s.append(time.perf_counter() - started)
                done.set()

            committer.submit_nowait(batch, on_durable)
            await done.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        await committer.commit(source.setup_events())
        started = time.perf_counter()
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as bidders:
                for index in range(submitters):
                    bidders.start_soon(bidder, f"bidder{index}")
        run.elapsed_s = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return run, committer


async def bench_offered_rate(
    store: SqliteStore, source, rate: float, seconds: float, events: int
) -> tuple[Run, GroupCommitter]:
    """Open loop: submit bids at ``rate`` per second whatever the latency."""
    run = Run(f"group commit, {rate:,.0f} bids/s offered")
    committer = GroupCommitter(store)
    outstanding = 0
    all_durable = trio.Event()

    def on_durable(error, started):
        nonlocal outstanding
        if error is not None:
            raise error
        run.latencies_s.append(time.perf_counter() - started)
        outstanding -= 1
        if outstanding == 0:
            all_durable.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        await committer.commit(source.setup_events())
        started = time.perf_counter()
        sent = 0
        while sent < events and time.perf_counter() - started < seconds:
            # Catch up with the schedule, then sleep until the next bid is due.
            due = min(events, int((time.perf_counter() - started) * rate) + 1)
            for number in range(sent, due):
                bidder = f"bidder{number % 100}"  # never the current leader
                batch = source.bid(bidder, f"{bidder}-{number}")
                if batch is None:
                    run.rejected += 1
                    continue
                outstanding += 1
                began = time.perf_counter()
                committer.submit_nowait(batch, lambda e, b=began: on_durable(e, b))
            sent = due
            await trio.sleep_until(trio.current_time() + 1 / rate)
        if outstanding:
            await all_durable.wait()
        run.elapsed_s = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return run, committer


async def bench_one_per_commit(
    store: SqliteStore, source, seconds: float, events: int
) -> Run:
    run = Run("one commit per event, 1 submitter")
    await trio.to_thread.run_sync(store.append_batch, source.setup_events())
    started = time.perf_counter()
    deadline = started + seconds
    number = 0

    while len(run.latencies_s) < events and time.perf_counter() < deadline:
        number += 1
        bidder = f"bidder{number % 2}"  # alternate, so the leader never re-bids
        batch = source.bid(bidder, f"{bidder}-{number}")
        if batch is None:
            run.rejected += 1
            continue
        began = time.perf_counter()
        await trio.to_thread.run_sync(store.append_batch, batch)
        run.latencies_s.append(time.perf_counter() - began)

    run.elapsed_s = time.perf_counter() - started
    return run


def open_store(root: Path, name: str) -> SqliteStore:
    store = SqliteStore.open(root / name)
    store.load()
    return store


def machine_line() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"machine: nproc {os.cpu_count()}, {model}, Python"
        f" {platform.python_version()}, SQLite {sqlite3.sqlite_version},"
        f" trio {trio.__version__}"
    )


def describe(committer: GroupCommitter, run: Run) -> str:
    statistics = committer.statistics()
    average = statistics.events_written / max(1, statistics.batches_written)
    return (
        f"{statistics.batches_written} batches, on average {average:.1f} events"
        f" per batch, largest {statistics.largest_batch_events};"
        f" {run.rejected} bids rejected"
    )


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as root:
        print(machine_line())

        with open_store(Path(root), "grouped") as store:
            source = make_source(store, args.synthetic)
            print(f"events: {source.description}; journal under {root}")
            grouped, committer = await bench_group_commit(
                store, source, args.submitters, args.seconds, args.events
            )
        print(grouped.line())
        print(f"  {describe(committer, grouped)}")

        with open_store(Path(root), "offered") as store:
            source = make_source(store, args.synthetic)
            offered, committer = await bench_offered_rate(
                store, source, args.rate, args.seconds, args.events
            )
        print(offered.line())
        print(f"  {describe(committer, offered)}")

        with open_store(Path(root), "single") as store:
            source = make_source(store, args.synthetic)
            single = await bench_one_per_commit(
                store, source, args.seconds, args.events
            )
        print(single.line())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--submitters", type=int, default=100, help="concurrent bidders (default 100)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=2_000,
        help="bids per second offered in the open-loop run (default 2000)",
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="length of each run (default 5)"
    )
    parser.add_argument(
        "--events",
        type=int,
        default=1_000_000,
        help="stop a run after this many durable events (default 1000000)",
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="use hand-built events even when bidwar.core is available",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main_async, parse_args())
