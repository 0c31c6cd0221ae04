"""The event journal: where every accepted event is kept, durably.

How this works
--------------
The room numbers its events (``seq`` 1, 2, 3, ... across restarts); the
group committer (``bidwar.group_commit``) writes them here in batches, and
nobody is told about an event before its batch is fsynced.

Storage sits behind the narrow :class:`EventStore` protocol so that a
Redis-backed store can stand beside :class:`SqliteStore` later.  Store methods
block; they are only ever called from worker threads, one call at a time.

Each stored record carries a hash chain so that the audit tool (and start-up)
can tell a damaged or altered journal from a good one::

    hash = sha256(f"{prev_hash}|{seq}|{at_ms}|{json.dumps(kind)}|{body}")

where ``body`` is the event's canonical JSON text (sorted keys, no spaces,
ASCII) exactly as stored, and the first record's ``prev_hash`` is 64 zeros.
The chain catches accidents and casual edits; it is not a signature, since
anyone who can write the file can also recompute every hash.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "APPLICATION",
    "FORMAT_VERSION",
    "GENESIS_HASH",
    "Damage",
    "EventStore",
    "JournalClosed",
    "JournalCorrupt",
    "JournalError",
    "JournalLocked",
    "NotAJournal",
    "Record",
    "Recovery",
    "SqliteStore",
    "StorageError",
    "canonical_json",
    "encode_event",
    "journal_path",
    "record_hash",
    "scan_journal",
    "verify_chain",
]

logger = logging.getLogger("bidwar.journal")

APPLICATION = "bidwar-journal"
FORMAT_VERSION = 1
GENESIS_HASH = "0" * 64

JOURNAL_FILENAME = "journal.sqlite3"
LOCK_FILENAME = "journal.lock"

# SQLite's own "what kind of file is this" header field, so that `file` and
# other tools can recognise a journal without knowing our meta table.
_SQLITE_APPLICATION_ID = 0x62647772  # "bdwr"
_SQLITE_HEADER = b"SQLite format 3\x00"

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE events ("
    " seq INTEGER PRIMARY KEY,"
    " at_ms INTEGER NOT NULL,"
    " kind TEXT NOT NULL,"
    " body TEXT NOT NULL,"
    " prev_hash TEXT NOT NULL,"
    " hash TEXT NOT NULL)",
)

_SELECT_ROWS = "SELECT seq, at_ms, kind, body, prev_hash, hash FROM events ORDER BY seq"


# --- errors ---------------------------------------------------------------


class JournalError(Exception):
    """Root of every journal error; ``str()`` is meant for an operator."""


class JournalLocked(JournalError):
    """Another server process holds this data directory."""


class NotAJournal(JournalError):
    """The journal file exists but is not a bidwar journal (or not SQLite)."""


class JournalClosed(JournalError):
    """The journal writer has stopped; nothing more can be submitted."""


class StorageError(JournalError):
    """Reading or writing the journal failed (disk full, read-only, I/O error).

    Nothing of the failed batch was committed.
    """


class JournalCorrupt(JournalError):
    """A record that is not the last one is damaged, altered or missing.

    ``seq`` names the first record that failed verification.
    """

    def __init__(self, seq: int, problem: str, path: str | None = None) -> None:
        super().__init__(seq, problem, path)
        self.seq = seq
        self.problem = problem
        self.path = path

    def __str__(self) -> str:
        where = f" in {self.path}" if self.path else ""
        return f"journal record {self.seq}{where} is bad: {self.problem}"


# --- records and verification ----------------------------------------------


@dataclass(frozen=True)
class Record:
    """One verified journal record; ``body`` is the event dict as submitted."""

    seq: int
    at_ms: int
    kind: str
    body: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Damage:
    """A record that failed verification, and what is wrong with it."""

    seq: int
    problem: str


@dataclass(frozen=True)
class Recovery:
    """What :meth:`EventStore.load` found.

    ``dropped`` is set when the last record was damaged (a write that never
    completed) and has been removed from the journal.
    """

    records: list[Record]
    dropped: Damage | None = None


def canonical_json(value: Any) -> str:
    """Encode ``value`` the one way the journal hashes and stores it."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def record_hash(prev_hash: str, seq: int, at_ms: int, kind: str, body_json: str) -> str:
    """Return the chain hash of one record (see the module docstring)."""
    text = f"{prev_hash}|{seq}|{at_ms}|{json.dumps(kind)}|{body_json}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def verify_chain(
    rows: Iterable[Sequence[Any]], *, path: str | None = None
) -> tuple[list[Record], Damage | None]:
    """Verify raw ``(seq, at_ms, kind, body, prev_hash, hash)`` rows in seq order.

    Returns the good records and, when only the last row is damaged in
    itself, that damage (the caller decides whether to drop or report it).
    Raises :class:`JournalCorrupt` for anything else: a damaged record
    followed by others, a missing seq, or a broken link between records.
    """
    rows = list(rows)
    records: list[Record] = []
    prev_hash = GENESIS_HASH

    for index, row in enumerate(rows):
        expected_seq = index + 1
        if row[0] != expected_seq:
            raise JournalCorrupt(
                expected_seq, f"record is missing (found {row[0]!r} in its place)", path
            )

        # A record whose own content does not match its own hash was damaged
        # in place; at the very end that is what an unfinished write looks like.
        record, problem = _check_row(row)
        if problem is not None:
            if index == len(rows) - 1:
                return records, Damage(expected_seq, problem)
            raise JournalCorrupt(expected_seq, problem, path)

        # An intact record that does not link to its predecessor means the
        # predecessor was altered and re-hashed, or this one was swapped in.
        if record.prev_hash != prev_hash and expected_seq == 1:
            raise JournalCorrupt(1, "it does not start the chain", path)
        if record.prev_hash != prev_hash:
            raise JournalCorrupt(
                expected_seq - 1,
                f"its hash does not match the link stored in record {expected_seq}:"
                f" record {expected_seq - 1} was altered or record"
                f" {expected_seq} was replaced",
                path,
            )

        records.append(record)
        prev_hash = record.hash

    return records, None


def _check_row(row: Sequence[Any]) -> tuple[Record, None] | tuple[None, str]:
    """Check one row against itself: body parses, fields agree, hash matches."""
    seq, at_ms, kind, body_json, prev_hash, stored_hash = row
    if not (isinstance(at_ms, int) and isinstance(kind, str)):
        return None, "at_ms or kind has the wrong type"
    if not (isinstance(body_json, str) and isinstance(prev_hash, str)):
        return None, "body or prev_hash has the wrong type"

    try:
        body = json.loads(body_json)
    except ValueError:
        return None, "body is not valid JSON"
    if not isinstance(body, dict):
        return None, "body is not a JSON object"
    if (body.get("seq"), body.get("at_ms"), body.get("type")) != (seq, at_ms, kind):
        return None, "body disagrees with the record's seq, at_ms or type"

    if record_hash(prev_hash, seq, at_ms, kind, body_json) != stored_hash:
        return None, "hash does not match the record's content (altered or torn)"
    return Record(seq, at_ms, kind, body, prev_hash, stored_hash), None


def encode_event(event: Any) -> tuple[int, int, str, str]:
    """Validate one event dict and return ``(seq, at_ms, kind, body_json)``.

    Raises :class:`ValueError` or :class:`TypeError` for a malformed event;
    that is a bug in the caller, not a storage problem.
    """
    if not isinstance(event, dict):
        raise TypeError(f"an event must be a dict, not {type(event).__name__}")

    seq, at_ms, kind = event.get("seq"), event.get("at_ms"), event.get("type")
    if type(seq) is not int or seq < 1:
        raise ValueError(f"event seq must be a positive int, got {seq!r}")
    if type(at_ms) is not int:
        raise ValueError(f"event at_ms must be an int, got {at_ms!r}")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"event type must be a non-empty str, got {kind!r}")

    return seq, at_ms, kind, canonical_json(event)


# --- the store interface ----------------------------------------------------


class EventStore(Protocol):
    """Where events are kept: the narrow interface every backend implements.

    Every method blocks and must be called from a worker thread (never the
    trio thread), one call at a time.
    """

    @property
    def last_seq(self) -> int:
        """The seq of the last durable event (0 for an empty journal)."""
        ...

    @property
    def last_at_ms(self) -> int | None:
        """The ``at_ms`` of the last durable event, or None when empty."""
        ...

    def load(self) -> Recovery:
        """Read and verify every record; drop a damaged last record.

        Must be called before the first :meth:`append_batch`; may be called
        again later to rebuild state.  Raises :class:`JournalCorrupt` or
        :class:`StorageError`.
        """
        ...

    def append_batch(self, events: Sequence[dict[str, Any]]) -> None:
        """Write ``events`` in one transaction; durable when this returns.

        The events' seqs must continue from :attr:`last_seq` by exactly one
        each (:class:`ValueError` otherwise).  On :class:`StorageError`
        nothing of the batch was kept and the store stays usable.
        """
        ...

    def close(self) -> None:
        """Release the store; safe to call twice."""
        ...


# --- SQLite -----------------------------------------------------------------


def journal_path(data_dir: Path | str) -> Path:
    """Where the journal of ``data_dir`` lives."""
    return Path(data_dir) / JOURNAL_FILENAME


class SqliteStore:
    """An :class:`EventStore` in ``<data_dir>/journal.sqlite3``.

    Holds an exclusive lock on ``<data_dir>/journal.lock`` while open, so two
    servers can never write the same journal.  All methods block; a
    ``threading.Lock`` serialises them, so calling :meth:`load` while the
    committer writes is safe (one waits for the other).
    """

    def __init__(self, data_dir: Path, connection: sqlite3.Connection, lock_fd: int):
        """Use :meth:`open`."""
        self.data_dir = data_dir
        self.path = journal_path(data_dir)
        self._connection: sqlite3.Connection | None = connection
        self._lock_fd = lock_fd
        self._mutex = threading.Lock()
        self._loaded = False
        self._tail: tuple[int, int | None, str] = (0, None, GENESIS_HASH)

    @classmethod
    def open(cls, data_dir: Path | str) -> SqliteStore:
        """Open (creating if needed) the journal of ``data_dir``.  Blocking.

        Raises :class:`JournalLocked` when another process has it open,
        :class:`NotAJournal` for a foreign file, and :class:`StorageError`
        when the directory or file cannot be created or written.
        """
        data_dir = Path(data_dir)
        lock_fd = _take_lock(data_dir)
        try:
            connection = _connect_writer(journal_path(data_dir))
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(data_dir, connection, lock_fd)

    @property
    def last_seq(self) -> int:
        return self._tail[0]

    @property
    def last_at_ms(self) -> int | None:
        return self._tail[1]

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def load(self) -> Recovery:
        with self._mutex:
            connection = self._require_connection()
            try:
                rows = connection.execute(_SELECT_ROWS).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"cannot read {self.path}: {exc}") from exc

            records, damage = verify_chain(rows, path=str(self.path))
            if damage is not None:
                self._drop_torn_tail(connection, damage)

            last = records[-1] if records else None
            self._tail = (
                (last.seq, last.at_ms, last.hash) if last else (0, None, GENESIS_HASH)
            )
            self._loaded = True
            logger.info("journal %s loaded: %d records", self.path, len(records))
            return Recovery(records, damage)

    def append_batch(self, events: Sequence[dict[str, Any]]) -> None:
        if not events:
            return
        with self._mutex:
            connection = self._require_connection()
            if not self._loaded:
                raise RuntimeError("call load() before append_batch()")

            rows, tail = self._chain(events)
            try:
                _insert_rows(connection, rows)
            except sqlite3.Error as exc:
                self._recover_from_failed_write(connection)
                raise StorageError(
                    f"could not write events {rows[0][0]}-{rows[-1][0]}"
                    f" to {self.path}: {exc}"
                ) from exc
            self._tail = tail

    def close(self) -> None:
        with self._mutex:
            if self._connection is None:
                return
            try:
                self._connection.close()
            finally:
                self._connection = None
                os.close(self._lock_fd)

    def _require_connection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise JournalClosed(f"journal {self.path} is closed")
        return self._connection

    def _chain(self, events: Sequence[dict[str, Any]]) -> tuple[list[tuple], tuple]:
        """Number-check and hash ``events`` against the current tail.

        The tail only advances after the commit, so a failed batch leaves the
        chain exactly where the file has it.
        """
        last_seq, last_at_ms, prev_hash = self._tail
        rows = []
        for event in events:
            seq, at_ms, kind, body_json = encode_event(event)
            if seq != last_seq + 1:
                raise ValueError(
                    f"event seq {seq} does not follow the journal's last seq {last_seq}"
                )
            digest = record_hash(prev_hash, seq, at_ms, kind, body_json)
            rows.append((seq, at_ms, kind, body_json, prev_hash, digest))
            last_seq, last_at_ms, prev_hash = seq, at_ms, digest
        return rows, (last_seq, last_at_ms, prev_hash)

    def _recover_from_failed_write(self, connection: sqlite3.Connection) -> None:
        """Roll back, then re-read the tail so the chain matches the file."""
        try:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            row = connection.execute(
                "SELECT seq, at_ms, hash FROM events ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        except sqlite3.Error:
            # Keep the tail we had: it is what we last saw committed.
            logger.warning("journal %s: could not re-read the tail", self.path)
            return
        self._tail = tuple(row) if row else (0, None, GENESIS_HASH)

    def _drop_torn_tail(self, connection: sqlite3.Connection, damage: Damage) -> None:
        try:
            with _transaction(connection):
                connection.execute("DELETE FROM events WHERE seq = ?", (damage.seq,))
        except sqlite3.Error as exc:
            raise StorageError(
                f"cannot remove damaged last record {damage.seq} from {self.path}:"
                f" {exc}"
            ) from exc
        logger.warning(
            "journal %s: dropped damaged last record %d (%s); treating it as a"
            " write that never completed",
            self.path,
            damage.seq,
            damage.problem,
        )


def _take_lock(data_dir: Path) -> int:
    """Create ``data_dir`` if needed and lock it for this process, or raise."""
    lock_path = data_dir / LOCK_FILENAME
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StorageError(
            f"cannot use data directory {data_dir}: {exc.strerror or exc}"
        ) from exc

    # flock belongs to this open file, so even a second open in the same
    # process is refused, and the kernel releases it if we crash.
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise JournalLocked(
            f"data directory {data_dir} is in use by another bidwar server"
            f"{holder} (it holds {lock_path}); stop that server or use another"
            " data directory"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StorageError(f"cannot lock {lock_path}: {exc.strerror}") from exc

    _write_holder(fd)
    return fd


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (process {pid})" if pid.isdigit() else ""


def _write_holder(fd: int) -> None:
    """Record our pid in the lock file, purely to help the next error message."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError:
        pass


def _connect_writer(path: Path) -> sqlite3.Connection:
    """Open, identify and prepare the journal file for writing."""
    _refuse_non_sqlite(path)
    try:
        # check_same_thread=False: trio's worker threads differ from call to
        # call; the store's mutex keeps use sequential.
        connection = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=5.0
        )
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open {path}: {exc}") from exc

    try:
        # Identify before changing anything, so a foreign database is left
        # exactly as we found it.
        is_new = _identify(connection, path)
        _configure(connection)
        if is_new:
            _create_schema(connection)
    except sqlite3.DatabaseError as exc:
        connection.close()
        if isinstance(exc, sqlite3.OperationalError):
            raise StorageError(f"cannot prepare {path}: {exc}") from exc
        raise NotAJournal(f"{path} is not a bidwar journal ({exc})") from exc
    except BaseException:
        connection.close()
        raise
    return connection


def _refuse_non_sqlite(path: Path) -> None:
    """Refuse a file that is not SQLite at all, before SQLite touches it."""
    try:
        with open(path, "rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    if header and header != _SQLITE_HEADER:
        raise NotAJournal(
            f"{path} is not a bidwar journal (not an SQLite database); move it"
            " away or use another data directory"
        )


def _identify(connection: sqlite3.Connection, path: Path | str) -> bool:
    """Return True for an empty database; raise unless it is our journal."""
    tables = {
        name
        for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        )
    }
    if not tables:
        return True
    if not {"meta", "events"} <= tables:
        raise NotAJournal(
            f"{path} is an SQLite database but not a bidwar journal"
            f" (tables: {', '.join(sorted(tables))})"
        )

    meta = dict(connection.execute("SELECT key, value FROM meta"))
    if meta.get("application") != APPLICATION:
        raise NotAJournal(f"{path} is an SQLite database but not a bidwar journal")
    version = meta.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise JournalError(
            f"{path} has journal format {version!r}; this bidwar reads format"
            f" {FORMAT_VERSION} or older; upgrade bidwar"
        )
    return False


def _configure(connection: sqlite3.Connection) -> None:
    # WAL: one fsync per commit (of the log), and readers such as the audit
    # tool never block the writer.
    mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode})")

    # FULL, not NORMAL: in WAL mode NORMAL only syncs the log at checkpoints,
    # so a commit could vanish after a power cut.  We promise that an
    # acknowledged bid survives one, so every commit waits for its fsync
    # (group commit is what keeps that affordable).
    connection.execute("PRAGMA synchronous=FULL")


def _create_schema(connection: sqlite3.Connection) -> None:
    with _transaction(connection):
        for statement in _SCHEMA:
            connection.execute(statement)
        connection.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("application", APPLICATION), ("format_version", str(FORMAT_VERSION))],
        )
        connection.execute(f"PRAGMA application_id={_SQLITE_APPLICATION_ID}")


def _insert_rows(connection: sqlite3.Connection, rows: list[tuple]) -> None:
    with _transaction(connection):
        connection.executemany(
            "INSERT INTO events (seq, at_ms, kind, body, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> None:
        self._connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self._connection.execute("COMMIT")
        elif self._connection.in_transaction:
            self._connection.execute("ROLLBACK")


def scan_journal(data_dir: Path | str) -> tuple[list[Record], Damage | None]:
    """Read and verify the journal of ``data_dir`` without changing anything.

    Opens the file read-only and takes no lock, so it works while a server
    is writing (it sees one consistent snapshot).  Returns what
    :func:`verify_chain` returns.  Raises :class:`StorageError` when there is
    no readable journal, :class:`NotAJournal`, or :class:`JournalCorrupt`.
    """
    path = journal_path(data_dir)
    if not path.is_file():
        raise StorageError(f"there is no journal at {path}")
    _refuse_non_sqlite(path)

    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open {path} read-only: {exc}") from exc
    try:
        # One read transaction: the writer's later commits stay invisible.
        connection.execute("BEGIN")
        _identify(connection, path)
        rows = connection.execute(_SELECT_ROWS).fetchall()
    except sqlite3.OperationalError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise NotAJournal(f"{path} is not a bidwar journal ({exc})") from exc
    finally:
        connection.close()
    return verify_chain(rows, path=str(path))
