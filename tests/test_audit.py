"""The audit tool: a verified account of every lot, or a named bad record."""

import csv
import io
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest
import trio

from bidwar.audit import EXIT_INVALID, EXIT_UNREADABLE, EXIT_VALID, format_ms, main
from bidwar.journal import SqliteStore, journal_path

REPO = Path(__file__).resolve().parents[1]
T0_MS = 1_764_777_600_000  # 2025-12-03T16:00:00Z


def at(seconds: float) -> int:
    return T0_MS + int(seconds * 1000)


EVENTS = [
    {"type": "host_changed", "host": "hal"},
    {
        "type": "lot_opened",
        "lot": 1,
        "title": "Signed guitar",
        "starting_price": "100.00",
        "increment": "5.00",
        "ends_at_ms": at(60),
        "extension_s": 10,
        "sudden_death": False,
    },
    {"type": "bid", "lot": 1, "bidder": "ann", "amount": "100.00", "bid_count": 1},
    {"type": "chat", "author": "bob", "text": "lovely"},
    {"type": "bid", "lot": 1, "bidder": "bob", "amount": "105.00", "bid_count": 2},
    {"type": "lot_extended", "lot": 1, "ends_at_ms": at(70)},
    {"type": "bid", "lot": 1, "bidder": "ann", "amount": "110.00", "bid_count": 3},
    {
        "type": "lot_closed",
        "lot": 1,
        "outcome": "sold",
        "winner": "ann",
        "price": "110.00",
        "bid_count": 3,
    },
    {
        "type": "lot_opened",
        "lot": 2,
        "title": "Old lamp",
        "starting_price": "20.00",
        "increment": "1.00",
        "ends_at_ms": at(200),
        "extension_s": 10,
        "sudden_death": True,
    },
    {
        "type": "lot_closed",
        "lot": 2,
        "outcome": "passed",
        "winner": None,
        "price": None,
        "bid_count": 0,
    },
]


def numbered(events):
    """Give the sample events seqs and times, as the auction actor would."""
    return [
        {"seq": seq, "at_ms": at(seq * 5), **event}
        for seq, event in enumerate(events, start=1)
    ]


@pytest.fixture
def data_dir(tmp_path):
    with SqliteStore.open(tmp_path) as store:
        store.load()
        store.append_batch(numbered(EVENTS))
    return tmp_path


def run_audit(capsys, *args):
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_text_report_shows_each_lot_result_and_bid_history(data_dir, capsys):
    status, out, err = run_audit(capsys, "--data-dir", str(data_dir))

    assert status == EXIT_VALID and err == ""
    assert "10 records, hash chain valid (last seq 10)" in out
    assert "Lot 1: Signed guitar" in out
    assert "sold to ann for 110.00 (3 bids)" in out
    assert "Lot 2: Old lamp" in out
    assert "passed (0 bids)" in out
    assert f"opened   {format_ms(at(10))}" in out
    bid_lines = [line.split() for line in out.splitlines() if "2025-12-03T" in line]
    assert ["5", format_ms(at(25)), "bob", "105.00"] in bid_lines


def test_times_are_utc_with_milliseconds():
    assert format_ms(T0_MS + 1_234) == "2025-12-03T16:00:01.234Z"


def test_the_json_report_is_one_document_with_decimal_strings(data_dir, capsys):
    status, out, _ = run_audit(capsys, "--data-dir", str(data_dir), "--json")

    document = json.loads(out)
    first, second = document["lots"]
    assert status == EXIT_VALID and document["valid"] is True
    assert document["last_seq"] == 10 and len(document["last_hash"]) == 64
    assert (first["outcome"], first["winner"], first["price"]) == (
        "sold",
        "ann",
        "110.00",
    )
    assert first["opened_at"] == format_ms(at(10))
    assert [bid["amount"] for bid in first["bids"]] == ["100.00", "105.00", "110.00"]
    assert [bid["seq"] for bid in first["bids"]] == [3, 5, 7]
    assert (second["outcome"], second["winner"], second["bids"]) == ("passed", None, [])


def test_the_csv_report_has_a_row_per_lot_and_per_bid(data_dir, capsys):
    status, out, _ = run_audit(capsys, "--data-dir", str(data_dir), "--csv")

    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == EXIT_VALID
    assert [(row["row"], row["lot"]) for row in rows] == [
        ("lot", "1"),
        ("bid", "1"),
        ("bid", "1"),
        ("bid", "1"),
        ("lot", "2"),
    ]
    assert rows[0]["price"] == "110.00" and rows[0]["bid_count"] == "3"
    assert (rows[2]["seq"], rows[2]["bidder"], rows[2]["amount"]) == (
        "5",
        "bob",
        "105.00",
    )


def test_a_lot_still_running_is_reported_as_not_closed(tmp_path, capsys):
    with SqliteStore.open(tmp_path) as store:
        store.load()
        store.append_batch(numbered(EVENTS[:5]))

    status, out, _ = run_audit(capsys, "--data-dir", str(tmp_path))

    assert status == EXIT_VALID
    assert "open, not closed yet (2 bids so far)" in out


def test_an_altered_bid_fails_the_audit_naming_the_record(data_dir, capsys):
    connection = sqlite3.connect(journal_path(data_dir), isolation_level=None)
    connection.execute(
        "UPDATE events SET body = replace(body, '105.00', '10.00') WHERE seq = 5"
    )
    connection.close()

    status, out, err = run_audit(capsys, "--data-dir", str(data_dir), "--json")

    assert status == EXIT_INVALID
    assert out == ""
    assert "journal record 5" in err and "hash does not match" in err


def test_a_damaged_last_record_fails_the_audit_and_is_not_repaired(data_dir, capsys):
    connection = sqlite3.connect(journal_path(data_dir), isolation_level=None)
    connection.execute("UPDATE events SET hash = 'x' WHERE seq = 10")
    connection.close()

    status, _, err = run_audit(capsys, "--data-dir", str(data_dir))

    assert status == EXIT_INVALID
    assert "journal record 10 (the last one) is bad" in err
    with SqliteStore.open(data_dir) as store:
        assert store.load().dropped.seq == 10


def test_the_audit_runs_beside_a_server_holding_the_journal(data_dir, capsys):
    with SqliteStore.open(data_dir) as store:
        store.load()
        store.append_batch(
            [{"type": "chat", "seq": 11, "at_ms": at(60), "author": "a", "text": "b"}]
        )

        status, out, _ = run_audit(capsys, "--data-dir", str(data_dir))

    assert status == EXIT_VALID
    assert "11 records" in out


def test_a_missing_journal_is_reported_and_not_created(tmp_path, capsys):
    status, _, err = run_audit(capsys, "--data-dir", str(tmp_path / "nowhere"))

    assert status == EXIT_UNREADABLE
    assert "no journal at" in err
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.slow
async def test_the_module_runs_as_a_command(data_dir):
    result = await trio.run_process(
        [sys.executable, "-m", "bidwar.audit", "--data-dir", str(data_dir), "--json"],
        capture_stdout=True,
        check=False,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )

    assert result.returncode == EXIT_VALID
    assert json.loads(result.stdout)["records"] == 10
