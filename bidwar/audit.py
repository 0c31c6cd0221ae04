"""Audit a journal: verify its hash chain, then report every lot and bid.

    python -m bidwar.audit [--data-dir DIR] [--json | --csv]

The journal is opened read-only and without the writer's lock, so the audit
can run beside a live server (it reads one consistent snapshot) as well as
after it stopped.  It reports; it never repairs: a damaged last record, which
the server would drop at start-up, is an audit failure here.

Exit status: 0 when the chain is valid, 2 when a record is altered, damaged
or missing (the message names the first bad record), 1 when there is no
readable journal at all.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from bidwar.journal import (
    JournalCorrupt,
    JournalError,
    Record,
    journal_path,
    scan_journal,
)

EXIT_VALID = 0
EXIT_UNREADABLE = 1
EXIT_INVALID = 2

# Must match the server's default so a bare `python -m bidwar.audit` in the
# same working directory audits the same journal.
DEFAULT_DATA_DIR = Path("bidwar-data")


class AuditFailure(Exception):
    """The journal cannot be trusted; ``str()`` names the first bad record."""

    def __init__(self, seq: int, message: str) -> None:
        super().__init__(message)
        self.seq = seq


@dataclass
class BidLine:
    seq: int
    at_ms: int
    bidder: str
    amount: str


@dataclass
class LotSummary:
    """One lot as the journal tells it; money stays in decimal strings."""

    lot: int
    title: str | None = None
    starting_price: str | None = None
    outcome: str = "open"  # open, paused, sold or passed
    winner: str | None = None
    price: str | None = None
    bid_count: int = 0
    opened_at_ms: int | None = None
    closed_at_ms: int | None = None
    bids: list[BidLine] = field(default_factory=list)


@dataclass(frozen=True)
class AuditReport:
    journal: str
    records: int
    last_seq: int
    last_hash: str | None
    lots: list[LotSummary]


def audit(data_dir: Path) -> AuditReport:
    """Verify the journal of ``data_dir`` and summarise its lots.

    Raises :class:`AuditFailure` when any record, the last one included, is
    bad, and :class:`~bidwar.journal.JournalError` when there is no readable
    journal.
    """
    try:
        records, damage = scan_journal(data_dir)
    except JournalCorrupt as error:
        raise AuditFailure(error.seq, str(error)) from error
    if damage is not None:
        raise AuditFailure(
            damage.seq,
            f"journal record {damage.seq} (the last one) is bad: {damage.problem}",
        )

    last = records[-1] if records else None
    return AuditReport(
        journal=str(journal_path(data_dir)),
        records=len(records),
        last_seq=last.seq if last else 0,
        last_hash=last.hash if last else None,
        lots=summarize(records),
    )


def summarize(records: Iterable[Record]) -> list[LotSummary]:
    """Fold verified records into one summary per lot, in lot order.

    Event kinds that do not concern a lot's result (chat, host changes,
    extensions, increment changes) are skipped.
    """
    lots: dict[int, LotSummary] = {}
    for record in records:
        body = record.body
        if "lot" not in body or body["lot"] is None:
            continue
        lot = lots.setdefault(body["lot"], LotSummary(lot=body["lot"]))
        _apply(lot, record.kind, record.at_ms, body)
    return [lots[number] for number in sorted(lots)]


def _apply(lot: LotSummary, kind: str, at_ms: int, body: dict[str, Any]) -> None:
    if kind == "lot_opened":
        lot.title = body.get("title")
        lot.starting_price = body.get("starting_price")
        lot.opened_at_ms = at_ms
    elif kind == "bid":
        lot.bids.append(BidLine(body["seq"], at_ms, body["bidder"], body["amount"]))
        lot.bid_count = body.get("bid_count", len(lot.bids))
    elif kind == "lot_paused":
        lot.outcome = "paused"
    elif kind == "lot_resumed":
        lot.outcome = "open"
    elif kind == "lot_closed":
        lot.outcome = body["outcome"]
        lot.winner = body.get("winner")
        lot.price = body.get("price")
        lot.bid_count = body.get("bid_count", len(lot.bids))
        lot.closed_at_ms = at_ms


# --- rendering ---------------------------------------------------------------


def format_ms(at_ms: int | None) -> str:
    """Server time as ISO 8601 UTC with milliseconds; empty for None."""
    if at_ms is None:
        return ""
    seconds, millis = divmod(at_ms, 1000)
    moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=millis * 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_text(report: AuditReport, out: TextIO) -> None:
    out.write(
        f"Journal {report.journal}: {report.records} records, hash chain valid"
        f" (last seq {report.last_seq})\n"
    )
    if not report.lots:
        out.write("No lots.\n")
    for lot in report.lots:
        out.write("\n")
        _render_lot_text(lot, out)


def _render_lot_text(lot: LotSummary, out: TextIO) -> None:
    out.write(f"Lot {lot.lot}: {lot.title or '(title not in journal)'}\n")
    out.write(f"  result   {_result_phrase(lot)}\n")
    out.write(f"  opened   {format_ms(lot.opened_at_ms) or '-'}\n")
    out.write(f"  closed   {format_ms(lot.closed_at_ms) or '-'}\n")
    if not lot.bids:
        return

    rows = [("seq", "time", "bidder", "amount")] + [
        (str(b.seq), format_ms(b.at_ms), b.bidder, b.amount) for b in lot.bids
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for seq, at, bidder, amount in rows:
        out.write(
            f"    {seq:>{widths[0]}}  {at:<{widths[1]}}  {bidder:<{widths[2]}}"
            f"  {amount:>{widths[3]}}\n"
        )


def _result_phrase(lot: LotSummary) -> str:
    bids = f"{lot.bid_count} bid{'' if lot.bid_count == 1 else 's'}"
    if lot.outcome == "sold":
        return f"sold to {lot.winner} for {lot.price} ({bids})"
    if lot.outcome == "passed":
        return f"passed ({bids})"
    return f"{lot.outcome}, not closed yet ({bids} so far)"


def render_json(report: AuditReport, out: TextIO) -> None:
    document = asdict(report)
    document["valid"] = True
    for lot in document["lots"]:
        lot["opened_at"] = format_ms(lot["opened_at_ms"]) or None
        lot["closed_at"] = format_ms(lot["closed_at_ms"]) or None
        for line in lot["bids"]:
            line["at"] = format_ms(line["at_ms"])
    json.dump(document, out, indent=2)
    out.write("\n")


CSV_COLUMNS = (
    "row",
    "lot",
    "title",
    "outcome",
    "winner",
    "price",
    "bid_count",
    "opened_at",
    "closed_at",
    "seq",
    "at",
    "bidder",
    "amount",
)


def render_csv(report: AuditReport, out: TextIO) -> None:
    """One ``lot`` row per lot (its result), followed by one ``bid`` row per bid."""
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for lot in report.lots:
        result = {
            "lot": lot.lot,
            "title": lot.title,
            "outcome": lot.outcome,
            "winner": lot.winner,
            "price": lot.price,
            "bid_count": lot.bid_count,
            "opened_at": format_ms(lot.opened_at_ms),
            "closed_at": format_ms(lot.closed_at_ms),
        }
        writer.writerow({"row": "lot", **result})
        for line in lot.bids:
            at = format_ms(line.at_ms)
            bid = {"seq": line.seq, "at": at, "bidder": line.bidder}
            writer.writerow(
                {"row": "bid", "lot": lot.lot, **bid, "amount": line.amount}
            )


RENDERERS = {"text": render_text, "json": render_json, "csv": render_csv}


# --- entry point ---------------------------------------------------------------


def run(data_dir: Path, output_format: str, out: TextIO, err: TextIO) -> int:
    """Audit ``data_dir``, write the report to ``out``; return the exit status."""
    try:
        report = audit(data_dir)
    except AuditFailure as failure:
        err.write(f"audit FAILED: {failure}\n")
        return EXIT_INVALID
    except JournalError as error:
        err.write(f"audit could not read the journal: {error}\n")
        return EXIT_UNREADABLE

    RENDERERS[output_format](report, out)
    return EXIT_VALID


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bidwar.audit",
        description="Verify a bidwar journal and print every lot's result and bids.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"the server's data directory (default ./{DEFAULT_DATA_DIR})",
    )
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="json",
        help="one JSON document",
    )
    formats.add_argument(
        "--csv",
        dest="format",
        action="store_const",
        const="csv",
        help="CSV rows: one per lot, then one per bid",
    )
    parser.set_defaults(format="text")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args.data_dir, args.format, sys.stdout, sys.stderr)
    except BrokenPipeError:
        # The reader went away (`... | head`): not worth a traceback.  Point
        # stdout at /dev/null so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_UNREADABLE


if __name__ == "__main__":
    sys.exit(main())
