"""The journal: durable before told, batched, verified, and honest about failure."""

import logging
import os
import signal
import sqlite3
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from bidwar.group_commit import GroupCommitter
from bidwar.journal import (
    GENESIS_HASH,
    JournalClosed,
    JournalCorrupt,
    JournalError,
    JournalLocked,
    NotAJournal,
    SqliteStore,
    StorageError,
    canonical_json,
    journal_path,
    record_hash,
    scan_journal,
)

REPO = Path(__file__).resolve().parents[1]
T0_MS = 1_764_777_600_000


def bid(seq: int, amount: str = "12.50", bidder: str = "ann") -> dict:
    return {
        "type": "bid",
        "seq": seq,
        "at_ms": T0_MS + seq * 10,
        "lot": 1,
        "bidder": bidder,
        "amount": amount,
        "ends_at_ms": T0_MS + 60_000,
        "bid_count": seq,
        "request_id": f"r-{seq}",
    }


def open_loaded(data_dir: Path) -> SqliteStore:
    store = SqliteStore.open(data_dir)
    store.load()
    return store


def raw_sql(data_dir: Path, statement: str, *params) -> None:
    """Change the file behind the journal's back, as damage or an editor would."""
    connection = sqlite3.connect(journal_path(data_dir), isolation_level=None)
    try:
        connection.execute(statement, params)
    finally:
        connection.close()


@pytest.fixture
def store(tmp_path):
    with open_loaded(tmp_path) as store:
        yield store


class ControlledStore:
    """Wraps a real store so a test decides when a write may finish or fail."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.gate: threading.Event | None = None
        self.fail_next: Exception | None = None
        self.batches: list[list[int]] = []

    @property
    def last_seq(self) -> int:
        return self.inner.last_seq

    @property
    def last_at_ms(self) -> int | None:
        return self.inner.last_at_ms

    def load(self):
        return self.inner.load()

    def append_batch(self, events) -> None:
        # A bound, not a sleep: a broken test fails instead of hanging forever.
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise RuntimeError("test gate never opened")
        self.batches.append([event["seq"] for event in events])
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        self.inner.append_batch(events)

    def close(self) -> None:
        self.inner.close()


def recorder():
    """A list of (label, error) and a factory of callbacks appending to it."""
    calls: list[tuple[object, BaseException | None]] = []

    def callback(label):
        return lambda error: calls.append((label, error))

    return calls, callback


async def settled(committer: GroupCommitter) -> BaseException | None:
    """Wait until everything submitted so far is resolved; the barrier's outcome."""
    done = trio.Event()
    outcome: list[BaseException | None] = []

    def on_durable(error: BaseException | None) -> None:
        outcome.append(error)
        done.set()

    committer.submit_nowait([], on_durable)
    await done.wait()
    return outcome[0]


# --- the store --------------------------------------------------------------


def test_appended_events_come_back_verified_after_reopening(tmp_path):
    events = [bid(1), bid(2, "13.50", "bob"), bid(3, "14.50")]
    with open_loaded(tmp_path) as store:
        store.append_batch(events[:2])
        store.append_batch(events[2:])

    with SqliteStore.open(tmp_path) as store:
        recovery = store.load()

        assert [record.body for record in recovery.records] == events
        assert recovery.dropped is None
        assert (store.last_seq, store.last_at_ms) == (3, events[-1]["at_ms"])
        first, second = recovery.records[:2]
        assert first.prev_hash == GENESIS_HASH
        assert second.prev_hash == first.hash
        assert (second.kind, second.at_ms, second.body["amount"]) == (
            "bid",
            events[1]["at_ms"],
            "13.50",
        )


def test_the_hash_covers_exactly_what_is_stored(store, tmp_path):
    store.append_batch([bid(1)])

    record = scan_journal(tmp_path)[0][0]
    connection = sqlite3.connect(journal_path(tmp_path))
    (body_json,) = connection.execute("SELECT body FROM events").fetchone()
    connection.close()

    assert record.hash == record_hash(GENESIS_HASH, 1, record.at_ms, "bid", body_json)


def test_a_batch_that_does_not_continue_the_seqs_is_refused(store):
    store.append_batch([bid(1)])

    with pytest.raises(ValueError, match="seq 3 does not follow"):
        store.append_batch([bid(3)])
    with pytest.raises(ValueError, match="seq 1 does not follow"):
        store.append_batch([bid(1)])

    assert store.last_seq == 1
    store.append_batch([bid(2)])


def test_append_before_load_is_a_usage_error(tmp_path):
    with SqliteStore.open(tmp_path) as store, pytest.raises(RuntimeError, match="load"):
        store.append_batch([bid(1)])


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=80), author=st.text(min_size=1, max_size=10))
def test_any_chat_text_survives_the_round_trip(text, author):
    event = {"type": "chat", "seq": 1, "at_ms": T0_MS, "author": author, "text": text}
    with tempfile.TemporaryDirectory() as data_dir:
        with open_loaded(Path(data_dir)) as store:
            store.append_batch([event])
        with SqliteStore.open(data_dir) as store:
            assert [record.body for record in store.load().records] == [event]


def test_a_torn_last_record_is_dropped_with_a_warning(tmp_path, caplog):
    with open_loaded(tmp_path) as store:
        store.append_batch([bid(1), bid(2), bid(3)])
    raw_sql(tmp_path, "UPDATE events SET body = substr(body, 1, 20) WHERE seq = 3")

    with (
        caplog.at_level(logging.WARNING, logger="bidwar.journal"),
        SqliteStore.open(tmp_path) as store,
    ):
        recovery = store.load()

        assert [record.seq for record in recovery.records] == [1, 2]
        assert recovery.dropped is not None and recovery.dropped.seq == 3
        assert "not valid JSON" in recovery.dropped.problem
        store.append_batch([bid(3, "99.00")])

    assert "dropped damaged last record 3" in caplog.text
    records, damage = scan_journal(tmp_path)
    assert damage is None and records[-1].body["amount"] == "99.00"


def test_a_last_record_with_a_wrong_hash_is_dropped(tmp_path):
    with open_loaded(tmp_path) as store:
        store.append_batch([bid(1), bid(2)])
    raw_sql(tmp_path, "UPDATE events SET hash = ? WHERE seq = 2", "f" * 64)

    with SqliteStore.open(tmp_path) as store:
        recovery = store.load()

    assert recovery.dropped.seq == 2
    assert [record.seq for record in recovery.records] == [1]


def test_an_altered_middle_record_is_corruption_naming_it(tmp_path):
    with open_loaded(tmp_path) as store:
        store.append_batch([bid(1), bid(2), bid(3)])
    raw_sql(
        tmp_path,
        "UPDATE events SET body = replace(body, '12.50', '1.00') WHERE seq = 2",
    )

    with SqliteStore.open(tmp_path) as store, pytest.raises(JournalCorrupt) as caught:
        store.load()

    assert caught.value.seq == 2
    assert "record 2" in str(caught.value)
    assert "hash does not match" in str(caught.value)


def test_an_altered_and_rehashed_record_breaks_the_link_to_the_next(tmp_path):
    with open_loaded(tmp_path) as store:
        store.append_batch([bid(1), bid(2), bid(3)])
    records, _ = scan_journal(tmp_path)
    forged_json = canonical_json(records[1].body | {"amount": "1.00"})
    forged_hash = record_hash(records[0].hash, 2, records[1].at_ms, "bid", forged_json)
    raw_sql(
        tmp_path,
        "UPDATE events SET body = ?, hash = ? WHERE seq = 2",
        forged_json,
        forged_hash,
    )

    with pytest.raises(JournalCorrupt) as caught:
        scan_journal(tmp_path)

    assert caught.value.seq == 2
    assert "record 3" in str(caught.value)


def test_a_missing_middle_record_is_corruption_naming_it(tmp_path):
    with open_loaded(tmp_path) as store:
        store.append_batch([bid(1), bid(2), bid(3)])
    raw_sql(tmp_path, "DELETE FROM events WHERE seq = 2")

    with SqliteStore.open(tmp_path) as store, pytest.raises(JournalCorrupt) as caught:
        store.load()

    assert caught.value.seq == 2
    assert "missing" in str(caught.value)


def test_a_file_that_is_not_sqlite_is_not_a_journal(tmp_path):
    journal_path(tmp_path).write_text("these are my holiday notes\n")

    with pytest.raises(NotAJournal, match="not an SQLite database"):
        SqliteStore.open(tmp_path)


def test_a_foreign_sqlite_database_is_refused_and_left_untouched(tmp_path):
    raw_sql(tmp_path, "CREATE TABLE users (name TEXT)")
    before = journal_path(tmp_path).read_bytes()

    with pytest.raises(NotAJournal, match="not a bidwar journal"):
        SqliteStore.open(tmp_path)

    assert journal_path(tmp_path).read_bytes() == before


def test_a_second_open_of_the_same_directory_is_locked_out(tmp_path):
    with SqliteStore.open(tmp_path):
        with pytest.raises(JournalLocked) as caught:
            SqliteStore.open(tmp_path)

        assert str(tmp_path) in str(caught.value)
        assert f"process {os.getpid()}" in str(caught.value)

    SqliteStore.open(tmp_path).close()


def test_an_unusable_data_directory_is_a_clear_storage_error(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")

    with pytest.raises(StorageError, match="cannot use data directory"):
        SqliteStore.open(blocker / "data")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_data_directory_is_a_clear_storage_error(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o555)

    with pytest.raises(StorageError, match=str(data_dir)):
        SqliteStore.open(data_dir)


def test_a_journal_that_turned_read_only_fails_writes_but_keeps_data(store, tmp_path):
    store.append_batch([bid(1)])
    store._connection.execute("PRAGMA query_only = ON")

    with pytest.raises(StorageError, match="could not write events 2-2"):
        store.append_batch([bid(2)])

    store._connection.execute("PRAGMA query_only = OFF")
    store.append_batch([bid(2)])
    assert [record.seq for record in scan_journal(tmp_path)[0]] == [1, 2]


# --- the group committer ----------------------------------------------------


async def test_events_submitted_together_are_committed_in_one_batch(tmp_path):
    store = ControlledStore(open_loaded(tmp_path))
    store.gate = threading.Event()
    committer = GroupCommitter(store)
    calls, callback = recorder()

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        committer.submit_nowait([bid(1)], callback(1))
        await trio.testing.wait_all_tasks_blocked()
        for seq in range(2, 102):
            committer.submit_nowait([bid(seq)], callback(seq))

        store.gate.set()
        await committer.commit([])
        nursery.cancel_scope.cancel()

    statistics = committer.statistics()
    assert store.batches == [[1], list(range(2, 102))]
    assert statistics.batches_written == 2
    assert statistics.events_written == 101
    assert statistics.last_batch_events == 100
    assert statistics.pending_events == 0
    assert calls == [(seq, None) for seq in range(1, 102)]
    store.close()


async def test_callbacks_run_in_order_and_only_after_the_commit(tmp_path):
    store = ControlledStore(open_loaded(tmp_path))
    store.gate = threading.Event()
    committer = GroupCommitter(store)
    seen: list[tuple[int, int]] = []

    def on_durable(seq):
        # What was durable at the moment we were told.
        return lambda error: seen.append((seq, len(scan_journal(tmp_path)[0])))

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        for seq in (1, 2, 3):
            committer.submit_nowait([bid(seq)], on_durable(seq))
        await trio.testing.wait_all_tasks_blocked()

        assert seen == []
        assert scan_journal(tmp_path)[0] == []

        store.gate.set()
        await committer.commit([])
        nursery.cancel_scope.cancel()

    assert [seq for seq, _ in seen] == [1, 2, 3]
    assert all(durable >= seq for seq, durable in seen)
    store.close()


async def test_commit_returns_once_durable(store, tmp_path):
    committer = GroupCommitter(store)

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        await committer.commit([bid(1), bid(2)])

        assert [record.seq for record in scan_journal(tmp_path)[0]] == [1, 2]
        nursery.cancel_scope.cancel()


CHILD = """
import os, signal, sys, trio
from bidwar.group_commit import GroupCommitter
from bidwar.journal import SqliteStore

async def main(data_dir):
    store = await trio.to_thread.run_sync(SqliteStore.open, data_dir)
    await trio.to_thread.run_sync(store.load)
    committer = GroupCommitter(store)

    def durable(error):
        print("durable", store.last_seq, error, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        for seq in range(1, 6):
            event = {"type": "bid", "seq": seq, "at_ms": seq, "amount": "1.00"}
            committer.submit_nowait([event], durable if seq == 5 else print)
        await trio.sleep_forever()

trio.run(main, sys.argv[1])
"""


@pytest.mark.slow
async def test_an_event_reported_durable_survives_sigkill_right_after(tmp_path):
    env = os.environ | {"PYTHONPATH": str(REPO)}

    result = await trio.run_process(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        capture_stdout=True,
        check=False,
        env=env,
    )

    assert result.returncode == -signal.SIGKILL
    assert result.stdout.decode().splitlines()[-1] == "durable 5 None"
    with SqliteStore.open(tmp_path) as store:
        assert [record.seq for record in store.load().records] == [1, 2, 3, 4, 5]


async def test_a_full_disk_fails_the_batch_keeps_old_data_and_recovers(store, tmp_path):
    committer = GroupCommitter(store)
    calls, callback = recorder()
    huge_chat = {"type": "chat", "seq": 3, "at_ms": T0_MS, "author": "x", "text": "y"}
    huge_chat["text"] = "y" * 200_000

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        await committer.commit([bid(1), bid(2)])

        # Let SQLite itself answer SQLITE_FULL: the file may not grow any more.
        (pages,) = store._connection.execute("PRAGMA page_count").fetchone()
        store._connection.execute(f"PRAGMA max_page_count = {pages}")
        committer.submit_nowait([huge_chat], callback("huge"))
        assert isinstance(await settled(committer), StorageError)

        ((label, error),) = calls
        assert isinstance(error, StorageError)
        assert "full" in str(error) and "events 3-3" in str(error)

        store._connection.execute("PRAGMA max_page_count = 1073741823")
        await committer.commit([bid(3)])
        nursery.cancel_scope.cancel()

    statistics = committer.statistics()
    assert (statistics.batches_failed, statistics.events_failed) == (1, 1)
    records, damage = scan_journal(tmp_path)
    assert [record.seq for record in records] == [1, 2, 3] and damage is None


async def test_a_failed_batch_fails_everything_queued_behind_it(tmp_path):
    store = ControlledStore(open_loaded(tmp_path))
    committer = GroupCommitter(store)
    calls, callback = recorder()

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        await committer.commit([bid(1)])

        store.gate = threading.Event()
        store.fail_next = StorageError("database or disk is full")
        committer.submit_nowait([bid(2)], callback(2))
        await trio.testing.wait_all_tasks_blocked()
        committer.submit_nowait([bid(3)], callback(3))
        store.gate.set()
        assert isinstance(await settled(committer), StorageError)

        assert [label for label, _ in calls] == [2, 3]
        assert all(isinstance(error, StorageError) for _, error in calls)
        assert calls[0][1] is calls[1][1]

        # The chain did not advance: seq 2 is next, and it links to seq 1.
        await committer.commit([bid(2, "20.00")])
        nursery.cancel_scope.cancel()

    records, damage = scan_journal(tmp_path)
    assert [record.body["amount"] for record in records] == ["12.50", "20.00"]
    store.close()


async def test_commit_raises_the_write_error(tmp_path):
    store = ControlledStore(open_loaded(tmp_path))
    store.fail_next = StorageError("I/O error")
    committer = GroupCommitter(store)

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        with pytest.raises(StorageError, match="I/O error"):
            await committer.commit([bid(1)])
        nursery.cancel_scope.cancel()
    store.close()


async def test_a_raising_callback_does_not_silence_the_others(store, caplog):
    committer = GroupCommitter(store)
    calls, callback = recorder()

    def broken(error):
        raise RuntimeError("bug in a caller")

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        committer.submit_nowait([bid(1)], broken)
        committer.submit_nowait([bid(2)], callback(2))
        await committer.commit([])
        nursery.cancel_scope.cancel()

    assert calls == [(2, None)]
    assert "bug in a caller" in caplog.text


async def test_a_malformed_event_is_refused_at_submission(store):
    committer = GroupCommitter(store)

    with pytest.raises(ValueError, match="seq"):
        committer.submit_nowait([{"type": "bid", "at_ms": 1}], print)
    with pytest.raises(TypeError):
        committer.submit_nowait([bid(1) | {"amount": object()}], print)

    assert committer.statistics().pending_events == 0


async def test_a_full_queue_refuses_nowait_and_makes_submit_wait(tmp_path):
    store = ControlledStore(open_loaded(tmp_path))
    store.gate = threading.Event()
    committer = GroupCommitter(store, max_pending=2)
    calls, callback = recorder()

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        committer.submit_nowait([bid(1), bid(2)], callback(1))
        await trio.testing.wait_all_tasks_blocked()

        assert not committer.has_room()
        with pytest.raises(trio.WouldBlock):
            committer.submit_nowait([bid(3)], callback(3))
        nursery.start_soon(committer.submit, [bid(3)], callback(3))
        await trio.testing.wait_all_tasks_blocked()
        assert committer.statistics().pending_events == 2

        store.gate.set()
        await committer.commit([])
        nursery.cancel_scope.cancel()

    assert calls == [(1, None), (3, None)]
    store.close()


async def test_a_submission_that_can_never_fit_is_a_usage_error(store):
    committer = GroupCommitter(store, max_pending=2)

    with pytest.raises(ValueError, match="never fit"):
        committer.submit_nowait([bid(1), bid(2), bid(3)], print)


async def test_large_backlogs_are_split_into_bounded_whole_submissions(tmp_path):
    store = ControlledStore(open_loaded(tmp_path))
    store.gate = threading.Event()
    committer = GroupCommitter(store, max_batch=4)

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        committer.submit_nowait([bid(1)], print)
        await trio.testing.wait_all_tasks_blocked()
        committer.submit_nowait([bid(2), bid(3), bid(4)], print)
        committer.submit_nowait([bid(5), bid(6)], print)
        committer.submit_nowait([bid(7)], print)

        store.gate.set()
        await committer.commit([])
        nursery.cancel_scope.cancel()

    assert store.batches == [[1], [2, 3, 4], [5, 6, 7]]
    store.close()


async def test_cancellation_flushes_what_was_already_queued(store, tmp_path):
    committer = GroupCommitter(store)
    calls, callback = recorder()

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        for seq in (1, 2, 3):
            committer.submit_nowait([bid(seq)], callback(seq))
        nursery.cancel_scope.cancel()

    assert calls == [(1, None), (2, None), (3, None)]
    assert store.last_seq == 3
    with pytest.raises(JournalClosed):
        committer.submit_nowait([bid(4)], print)


async def test_cancellation_during_a_write_finishes_it_then_flushes(tmp_path):
    store = ControlledStore(open_loaded(tmp_path))
    store.gate = threading.Event()
    committer = GroupCommitter(store)
    calls, callback = recorder()

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        committer.submit_nowait([bid(1)], callback(1))
        await trio.testing.wait_all_tasks_blocked()
        committer.submit_nowait([bid(2)], callback(2))
        nursery.cancel_scope.cancel()
        store.gate.set()

    assert calls == [(1, None), (2, None)]
    assert store.batches == [[1], [2]]
    store.close()


async def test_events_not_flushed_in_time_fail_with_journal_closed(store):
    committer = GroupCommitter(store, flush_timeout_s=0)
    calls, callback = recorder()

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        committer.submit_nowait([bid(1)], callback(1))
        nursery.cancel_scope.cancel()

    ((label, error),) = calls
    assert isinstance(error, JournalClosed) and isinstance(error, JournalError)
    assert store.last_seq == 0
