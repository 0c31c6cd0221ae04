"""The load test: its statistics, its invariant checks, and real runs.

The real runs start the server in this process (``run_server`` on port 0,
TLS with a trustme certificate) and the bidders in two spawned worker
processes, so they cross real sockets, TLS and the journal.
"""

import collections
import json
import math
from pathlib import Path

import pytest
import trio
import trustme
from hypothesis import given
from hypothesis import strategies as st

from bidwar.auction_service import AuctionServiceConfig
from bidwar.loadtest import __main__ as cli
from bidwar.loadtest.client_state import RequestLedger, SeqTracker
from bidwar.loadtest.config import LoadConfig, parse_args
from bidwar.loadtest.host import HostRecord
from bidwar.loadtest.invariants import check_run
from bidwar.loadtest.journal_check import AuditOutcome, JournalFacts
from bidwar.loadtest.metrics import AcceptedBid, GroupTally, LatencyHistogram
from bidwar.loadtest.results import RunResult
from bidwar.loadtest.runner import run_load
from bidwar.loadtest.scenarios import SCENARIOS, plan_bidders
from bidwar.server import ServerConfig, run_server
from bidwar.signaling import SignalingConfig

HOST_KEY = "load-test-host-key"


# ------------------------------------------------------------- statistics


def exact_percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


@given(
    st.lists(st.floats(min_value=0.02, max_value=60_000), min_size=1, max_size=300),
    st.sampled_from([1, 50, 95, 99, 100]),
)
def test_histogram_percentiles_are_within_one_percent(values, p):
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)

    assert histogram.percentile(p) == pytest.approx(
        exact_percentile(values, p), rel=0.011
    )
    assert histogram.max_ms == max(values)


@given(
    st.lists(st.floats(min_value=-5, max_value=1000), max_size=50),
    st.lists(st.floats(min_value=-5, max_value=1000), max_size=50),
)
def test_merged_histograms_equal_one_histogram_of_everything(first, second):
    merged, a, b = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for value in first:
        a.record(value)
        merged.record(value)
    for value in second:
        b.record(value)
        merged.record(value)

    a.merge(b)

    assert a.summary() == merged.summary()


def test_empty_histogram_has_no_percentiles():
    summary = LatencyHistogram().summary()

    assert summary["count"] == 0
    assert summary["p99_ms"] is None and summary["max_ms"] is None


def test_negative_latencies_are_counted_and_kept_at_the_floor():
    histogram = LatencyHistogram()
    histogram.record(-0.4)
    histogram.record(2.0)

    assert histogram.negative == 1
    assert histogram.percentile(50) == 0.01


def test_tallies_merge_every_figure():
    a, b = GroupTally(), GroupTally()
    a.sent["bid"] = 3
    b.sent["bid"] = 4
    b.replies["bid:bid_too_low"] = 2
    a.messages_per_client = [1]
    b.messages_per_client = [5]
    b.seq_error("x")

    a.merge(b)

    assert a.sent["bid"] == 7
    assert a.rejected_by_reason("bid") == {"bid_too_low": 2}
    assert a.summary()["messages_per_client"] == {"min": 1, "mean": 3.0, "max": 5}
    assert (a.seq_errors, a.seq_examples) == (1, ["x"])


# ------------------------------------------------------- per-client checks


def test_seq_tracker_accepts_consecutive_events_after_a_snapshot():
    tally = GroupTally()
    seqs = SeqTracker("alice", tally)
    seqs.on_snapshot(10)
    for seq in (11, 12, 13):
        seqs.on_event(seq)
    seqs.on_snapshot(40)  # an explicit resync may jump forward
    seqs.on_event(41)

    assert tally.seq_errors == 0


@pytest.mark.parametrize(
    "steps",
    [
        [("event", 1)],  # an event before the join snapshot
        [("snapshot", 5), ("event", 7)],  # a gap
        [("snapshot", 5), ("event", 6), ("event", 6)],  # a repeat
        [("snapshot", 5), ("event", 6), ("snapshot", 3)],  # a snapshot going back
    ],
)
def test_seq_tracker_counts_every_kind_of_disorder(steps):
    tally = GroupTally()
    seqs = SeqTracker("alice", tally)
    for kind, seq in steps:
        seqs.on_snapshot(seq) if kind == "snapshot" else seqs.on_event(seq)

    assert tally.seq_errors == 1


def test_seq_tracker_lets_a_resume_continue_from_its_last_seq():
    tally = GroupTally()
    seqs = SeqTracker("alice", tally)
    seqs.on_snapshot(3)
    seqs.on_event(4)
    # reconnect with last_seq=4: replay starts at 5, no snapshot needed
    seqs.on_event(5)

    assert tally.seq_errors == 0


def reply(request_id, verdict="accepted"):
    if verdict == "accepted":
        return {"type": "accepted", "id": request_id, "result": {}}
    return {"type": "rejected", "id": request_id, "reason": verdict, "message": ""}


def test_ledger_matches_each_reply_to_its_request_once():
    tally = GroupTally()
    ledger = RequestLedger("alice", tally)
    ledger.sent("b1", "bid", "{}", now=0.0)

    first = ledger.on_reply(reply("b1", "bid_too_low"), now=0.01)
    ledger.check_all_answered()

    assert first is not None and first.verdict == "bid_too_low"
    assert tally.replies["bid:bid_too_low"] == 1
    assert tally.reply_errors == 0


def test_ledger_allows_one_reply_per_send_of_a_resent_request():
    tally = GroupTally()
    ledger = RequestLedger("alice", tally)
    ledger.sent("b1", "bid", "{}", now=0.0)
    ledger.resent("b1", now=1.0)

    assert ledger.on_reply(reply("b1"), now=1.1) is not None
    assert ledger.on_reply(reply("b1"), now=1.2) is None  # the repeat
    assert tally.reply_errors == 0


@pytest.mark.parametrize(
    "replies",
    [
        [],  # never answered
        [reply("b1"), reply("b1")],  # answered twice, sent once
        [reply("b9")],  # a reply to nothing (and b1 unanswered)
    ],
)
def test_ledger_reports_missing_extra_and_unknown_replies(replies):
    tally = GroupTally()
    ledger = RequestLedger("alice", tally)
    ledger.sent("b1", "bid", "{}", now=0.0)
    for frame in replies:
        ledger.on_reply(frame, now=0.1)
    ledger.check_all_answered()

    assert tally.reply_errors >= 1


def test_ledger_reports_a_retry_that_changed_its_verdict():
    tally = GroupTally()
    ledger = RequestLedger("alice", tally)
    ledger.sent("b1", "bid", "{}", now=0.0)
    ledger.resent("b1", now=1.0)
    ledger.on_reply(reply("b1"), now=1.1)
    ledger.on_reply(reply("b1", "bid_too_low"), now=1.2)

    assert tally.reply_errors == 1


# ------------------------------------------------------- the run invariants


def consistent_run() -> RunResult:
    """A small run in which everything agrees: two bids, sold to bob at 11."""
    host = HostRecord(lot=1)
    host.bids = {5: ("alice", "b1", "10.00", 1), 6: ("bob", "b1", "11.00", 1)}
    host.closed = {
        "type": "lot_closed", "seq": 7, "lot": 1, "outcome": "sold",
        "winner": "bob", "price": "11.00", "bid_count": 2,
    }  # fmt: skip
    normal = GroupTally(clients=2)
    normal.accepted_bids = [
        AcceptedBid("alice", "b1", 1, 1000, 5),
        AcceptedBid("bob", "b1", 1, 1100, 6),
    ]
    normal.replies.update({"bid:accepted": 2})
    normal.closed_lots = collections.Counter({(1, "sold", "bob", "11.00"): 2})
    return RunResult(
        "war", bidders=2, processes=1, offered_rate=1.0, normal=normal, host=host
    )


def failed(result: RunResult) -> set[str]:
    return {check.name for check in check_run(result) if not check.ok}


def test_a_consistent_run_passes_every_invariant():
    assert failed(consistent_run()) == set()


def test_a_wrong_winner_is_caught():
    result = consistent_run()
    result.host.closed = {**result.host.closed, "winner": "alice", "price": "10.00"}

    assert "winner and price = highest accepted bid" in failed(result)


def test_an_accepted_bid_missing_from_the_events_is_caught():
    result = consistent_run()
    result.normal.accepted_bids.append(AcceptedBid("carol", "b7", 1, 1200, 9))

    assert {
        "accepted bids are in the events and journal",
        "winner and price = highest accepted bid",
    } <= failed(result)


def test_clients_disagreeing_on_the_result_is_caught():
    result = consistent_run()
    result.normal.closed_lots[(1, "sold", "alice", "10.00")] += 1

    assert failed(result) == {"clients agree on the result"}


def test_a_falling_price_is_caught():
    result = consistent_run()
    result.host.bids[8] = ("carol", "b2", "10.50", 1)

    assert "price never decreases" in failed(result)


def test_sequence_and_reply_violations_are_caught():
    result = consistent_run()
    result.normal.seq_error("alice: event seq 9 skipped 1 (expected 8)")
    result.normal.reply_error("alice: bid 'b3' never answered (sent 1 time(s))")

    assert failed(result) == {
        "seq +1 or explicit resync",
        "exactly one reply per request",
    }


def with_journal(result: RunResult, audited_winner: str = "bob") -> RunResult:
    """Add a journal and an audit report that tell the same story (by default)."""
    result.journal = JournalFacts(
        lot=1, bids=dict(result.host.bids), closed=dict(result.host.closed)
    )
    lot = {
        "lot": 1, "outcome": "sold", "winner": audited_winner, "price": "11.00",
        "bid_count": 2, "bids": [{"seq": 5}, {"seq": 6}],
    }  # fmt: skip
    result.audit = AuditOutcome(available=True, exit_code=0, report={"lots": [lot]})
    return result


def test_a_journal_and_audit_that_agree_pass():
    assert failed(with_journal(consistent_run())) == set()


def test_an_audit_that_names_another_winner_is_caught():
    result = with_journal(consistent_run(), audited_winner="alice")

    assert failed(result) == {"journal matches"}


def test_a_failing_audit_is_caught():
    result = with_journal(consistent_run())
    result.audit.exit_code = 1

    assert failed(result) == {"journal matches"}


def test_a_journal_missing_a_bid_is_caught():
    result = with_journal(consistent_run())
    del result.journal.bids[6]

    assert {
        "journal matches",
        "accepted bids are in the events and journal",
    } == failed(result)


def test_a_lot_that_never_closed_is_caught():
    result = consistent_run()
    result.host.closed = None

    assert "lot closed" in failed(result)


def test_the_command_exits_non_zero_when_an_invariant_fails(monkeypatch, tmp_path):
    broken = consistent_run()
    broken.host.closed = {**broken.host.closed, "price": "99.00"}

    async def fabricated_run(config):
        return broken

    monkeypatch.setattr(cli, "run_load", fabricated_run)
    config = LoadConfig(
        url="wss://127.0.0.1:1/", host_key="k", json_path=tmp_path / "r.json"
    )

    assert cli.run_and_report(config) == cli.EXIT_FAILED
    assert json.loads(config.json_path.read_text())["passed"] is False


# ------------------------------------------------------ planning and options


def test_slow_bidders_are_a_share_and_the_rate_is_spread_over_the_others():
    plans = plan_bidders(
        SCENARIOS["slow"], run_id="t", bidders=100, rate=180, slow_share=0.1, seed=1
    )
    readers = [plan for plan in plans if not plan.slow]

    assert len(plans) - len(readers) == 10
    assert sum(1 / plan.bid_interval_s for plan in readers) == pytest.approx(180)
    assert len({plan.name for plan in plans}) == 100


def test_options_refuse_a_non_loopback_url():
    with pytest.raises(SystemExit):
        parse_args(["--url", "wss://example.com:8765/", "--host-key", "k"])


# --------------------------------------------------------------- real runs


@pytest.fixture
def tls_files(tmp_path: Path, certificate_authority: trustme.CA):
    cafile, bundle = tmp_path / "ca.pem", tmp_path / "server.pem"
    certificate_authority.cert_pem.write_to_path(cafile)
    certificate = certificate_authority.issue_cert("localhost", "127.0.0.1")
    certificate.private_key_and_cert_chain_pem.write_to_path(bundle)
    return cafile, bundle


async def run_against_server(tmp_path, tls_files, **options) -> tuple[RunResult, list]:
    cafile, bundle = tls_files
    data_dir = tmp_path / "data"
    server_config = ServerConfig(
        data_dir=data_dir,
        host_key=HOST_KEY,
        tls_cert=bundle,
        tls_key=bundle,
        auction=AuctionServiceConfig(port=0),
        signaling=SignalingConfig(port=0),
    )
    async with trio.open_nursery() as nursery:
        server = await nursery.start(run_server, server_config)
        config = LoadConfig(
            url=f"wss://localhost:{server.auction_port}/",
            host_key=HOST_KEY,
            processes=2,
            cafile=cafile,
            data_dir=data_dir,
            progress=False,
            join_window_s=20,
            **options,
        )
        result = await run_load(config)
        nursery.cancel_scope.cancel()
    return result, check_run(result)


@pytest.mark.slow
async def test_a_churning_bidding_war_keeps_every_invariant(tmp_path, tls_files):
    result, checks = await run_against_server(
        tmp_path, tls_files, scenario="churn", bidders=24, duration_s=3, rate=40,
        churn_every_s=1.0,
    )  # fmt: skip

    assert [check for check in checks if not check.ok] == []
    assert result.joined == 24
    assert result.normal.replies["bid:accepted"] > 0
    assert result.normal.reconnects > 0 and result.normal.resent > 0
    assert result.audit is not None and result.audit.passed


@pytest.mark.slow
async def test_slow_readers_are_reported_apart_and_do_not_break_the_others(
    tmp_path, tls_files
):
    result, checks = await run_against_server(
        tmp_path, tls_files, scenario="slow", bidders=20, duration_s=3, rate=30,
        slow_share=0.2,
    )  # fmt: skip

    assert [check for check in checks if not check.ok] == []
    assert (result.slow.clients, result.normal.clients) == (4, 16)
    assert result.slow.ack_ms.count == 0 and result.slow.broadcast_ms.count == 0
    assert result.normal.broadcast_ms.count > 0
