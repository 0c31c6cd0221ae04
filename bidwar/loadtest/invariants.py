"""The invariants a load-test run must keep, checked after the run.

Each check compares two independent records of the same auction: the replies
the bidders got, the events they and the host received, and the journal
(read directly and through ``bidwar.audit``).  Slow bidders are left out of
the per-client checks: the server is allowed to resync or drop them.

:func:`check_run` is pure: it takes a :class:`RunResult` and returns one
:class:`Check` per invariant, so a fabricated inconsistent result can be fed
to it in tests.
"""

import dataclasses

from bidwar import money
from bidwar.loadtest.metrics import AcceptedBid
from bidwar.loadtest.results import RunResult

EXAMPLES = 3


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_run(result: RunResult) -> list[Check]:
    """Every invariant of the run, passed or not, in a stable order."""
    return [
        _workers_ran(result),
        _lot_closed(result),
        _winner_is_highest_accepted(result),
        _clients_agree_on_result(result),
        _journal_matches(result),
        _accepted_bids_published(result),
        _prices_increase(result),
        _sequence_numbers(result),
        _one_reply_per_request(result),
    ]


def _workers_ran(result: RunResult) -> Check:
    errors = result.worker_errors
    return Check(
        "workers ran to the end", not errors, "; ".join(errors) or "all reported"
    )


def _lot_closed(result: RunResult) -> Check:
    closed = result.host.closed
    if closed is None:
        return Check("lot closed", False, f"no lot_closed seen for lot {result.lot}")
    return Check("lot closed", True, f"lot {closed['lot']} {closed['outcome']}")


def _run_bids(result: RunResult) -> list[AcceptedBid]:
    return [bid for bid in result.normal.accepted_bids if bid.lot == result.lot]


def _winner_is_highest_accepted(result: RunResult) -> Check:
    name = "winner and price = highest accepted bid"
    closed = result.host.closed
    if closed is None:
        return Check(name, False, "the lot has no result")

    bids = _run_bids(result)
    if not bids:
        ok = closed["outcome"] == "passed" and closed["winner"] is None
        return Check(name, ok, f"no accepted bids; lot {closed['outcome']}")

    # Ties cannot be accepted (an equal bid is bid_too_low), so max is unique.
    best = max(bids, key=lambda bid: (bid.amount_cents, -bid.seq))
    expected = (best.bidder, money.format_cents(best.amount_cents))
    got = (closed["winner"], closed["price"])
    detail = (
        f"expected {expected[0]} at {expected[1]}, lot_closed says {got[0]} at {got[1]}"
    )
    return Check(name, got == expected and closed["outcome"] == "sold", detail)


def _clients_agree_on_result(result: RunResult) -> Check:
    seen = result.normal.closed_lots
    views = {key for key in seen if key[0] == result.lot}
    if len(views) > 1:
        return Check(
            "clients agree on the result", False, f"different results: {views}"
        )
    watchers = sum(seen.values())
    return Check("clients agree on the result", True, f"{watchers} client(s) saw it")


def _journal_matches(result: RunResult) -> Check:
    name = "journal matches"
    facts, audit = result.journal, result.audit
    if facts is None:
        return Check(
            name, True, "no --data-dir: compared with the lot_closed event only"
        )
    problems = []
    if facts.error:
        problems.append(facts.error)
    closed = result.host.closed
    if closed is not None and not _same_result(facts.closed, closed):
        problems.append(f"journal lot_closed {facts.closed} != event {closed}")
    seen = _lot_bids(result)
    if closed is not None and facts.bids != seen and result.host.complete:
        problems.append(
            f"journal has {len(facts.bids)} bids on the lot, the host saw {len(seen)}"
        )
    if audit is not None and audit.available:
        problems += _audit_problems(result)

    detail = "; ".join(problems) or f"{len(facts.bids)} bids and the result agree"
    if audit is not None and not audit.available:
        detail += " (bidwar.audit not available)"
    return Check(name, not problems, detail)


def _audit_problems(result: RunResult) -> list[str]:
    """Compare the audit's verdict and its account of the lot with the run."""
    audit = result.audit
    assert audit is not None
    if not audit.passed:
        return [f"bidwar.audit exited {audit.exit_code}: {audit.stderr_tail}"]
    report = audit.report if isinstance(audit.report, dict) else {}
    lots = [lot for lot in report.get("lots", ()) if lot.get("lot") == result.lot]
    closed = result.host.closed
    if not lots or closed is None:
        return (
            [] if closed is None else [f"bidwar.audit does not list lot {result.lot}"]
        )

    audited = lots[0]
    fields = ("outcome", "winner", "price", "bid_count")
    problems = [
        f"bidwar.audit says {field} {audited.get(field)!r}, the event {closed[field]!r}"
        for field in fields
        if audited.get(field) != closed[field]
    ]
    audited_seqs = {bid["seq"] for bid in audited.get("bids", ())}
    unaudited = [bid.seq for bid in _run_bids(result) if bid.seq not in audited_seqs]
    if unaudited:
        problems.append(
            f"bidwar.audit lacks accepted bids at seq {unaudited[:EXAMPLES]}"
        )
    return problems


def _lot_bids(result: RunResult) -> dict[int, tuple[str, str, str, int]]:
    return {seq: bid for seq, bid in result.host.bids.items() if bid[3] == result.lot}


def _same_result(a: dict | None, b: dict | None) -> bool:
    fields = ("lot", "outcome", "winner", "price", "bid_count", "seq")
    return a is not None and b is not None and all(a[f] == b[f] for f in fields)


def _accepted_bids_published(result: RunResult) -> Check:
    """Every bid a client was told was accepted is a bid event and journalled."""
    name = "accepted bids are in the events and journal"
    records = [("events", result.host.bids)] if result.host.complete else []
    if result.journal is not None and result.journal.error is None:
        records.append(("journal", result.journal.bids))
    if not records:
        return Check(name, False, "neither a complete event stream nor a journal")

    missing = []
    for bid in _run_bids(result):
        for source, bids in records:
            event = bids.get(bid.seq)
            wanted = (bid.bidder, bid.request_id, money.format_cents(bid.amount_cents))
            if event is None or event[:3] != wanted:
                missing.append(
                    f"{bid.bidder}/{bid.request_id} seq {bid.seq} ({source})"
                )
    detail = f"{len(_run_bids(result))} accepted bids checked"
    if missing:
        detail = f"{len(missing)} missing or different: " + ", ".join(
            missing[:EXAMPLES]
        )
    return Check(name, not missing, detail)


def _prices_increase(result: RunResult) -> Check:
    amounts = [
        money.parse_amount(amount)
        for _seq, (_bidder, _rid, amount, _lot) in sorted(_lot_bids(result).items())
    ]
    falls = [(a, b) for a, b in zip(amounts, amounts[1:], strict=False) if b <= a]
    detail = f"{len(amounts)} bid events"
    if falls:
        detail = f"{len(falls)} non-increasing steps, e.g. {falls[0]}"
    return Check("price never decreases", not falls, detail)


def _sequence_numbers(result: RunResult) -> Check:
    errors = result.normal.seq_errors + result.host.tally.seq_errors
    examples = result.host.tally.seq_examples + result.normal.seq_examples
    detail = "; ".join(examples[:EXAMPLES]) or (
        f"gapless for every client ({result.normal.resyncs} explicit resyncs)"
    )
    return Check("seq +1 or explicit resync", errors == 0, detail)


def _one_reply_per_request(result: RunResult) -> Check:
    errors = result.normal.reply_errors + result.host.tally.reply_errors
    examples = result.host.tally.reply_examples + result.normal.reply_examples
    answered = sum(
        count
        for key, count in result.normal.replies.items()
        if not key.startswith("hello:")
    )
    detail = "; ".join(examples[:EXAMPLES]) or f"{answered} requests, one reply each"
    return Check("exactly one reply per request", errors == 0, detail)
