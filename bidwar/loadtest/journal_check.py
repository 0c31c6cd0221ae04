"""What the server's journal says about the run's lot, and the audit's verdict.

Two independent readings of the data directory:

* :func:`read_journal` reads the journal itself (read-only, while the server
  keeps running) and extracts the lot's bids and its ``lot_closed`` record;
* :func:`run_audit` runs ``python -m bidwar.audit --data-dir DIR --json`` and
  keeps its exit status and JSON output, so the run fails if the audit tool
  finds the journal damaged or inconsistent.
"""

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import trio

from bidwar import journal

log = logging.getLogger("bidwar.loadtest")

AUDIT_TIMEOUT_S = 60.0


@dataclasses.dataclass
class JournalFacts:
    """The run lot as journalled: bids by seq and the closing record."""

    lot: int | None
    # seq -> (bidder, request_id, amount, lot)
    bids: dict[int, tuple[str, str, str, int]] = dataclasses.field(default_factory=dict)
    closed: dict[str, Any] | None = None
    records: int = 0
    error: str | None = None


@dataclasses.dataclass
class AuditOutcome:
    available: bool
    exit_code: int | None = None
    report: Any = None
    stderr_tail: str = ""

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


def read_journal(data_dir: Path, lot: int | None) -> JournalFacts:
    """Read the journal of ``data_dir``; problems are put in ``error``."""
    facts = JournalFacts(lot)
    try:
        records, damage = journal.scan_journal(data_dir)
    except journal.JournalError as error:
        facts.error = f"cannot read the journal: {error}"
        return facts

    if damage is not None:
        facts.error = f"journal damaged at seq {damage.seq}: {damage.problem}"
    facts.records = len(records)
    for record in records:
        body = record.body
        if body.get("lot") != lot:
            continue
        if body["type"] == "bid":
            facts.bids[record.seq] = (
                body["bidder"],
                body["request_id"],
                body["amount"],
                body["lot"],
            )
        elif body["type"] == "lot_closed":
            facts.closed = body
    return facts


async def run_audit(data_dir: Path) -> AuditOutcome:
    """Run the audit command; ``available`` is False if it does not exist yet."""
    command = [
        sys.executable,
        "-m",
        "bidwar.audit",
        "--data-dir",
        str(data_dir),
        "--json",
    ]
    with trio.move_on_after(AUDIT_TIMEOUT_S):
        completed = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
        stderr = completed.stderr.decode(errors="replace")
        if "No module named bidwar.audit" in stderr:
            return AuditOutcome(available=False, stderr_tail=stderr[-500:])
        return AuditOutcome(
            available=True,
            exit_code=completed.returncode,
            report=_parse_json(completed.stdout),
            stderr_tail=stderr[-500:],
        )
    return AuditOutcome(available=True, stderr_tail="audit timed out")


def _parse_json(output: bytes) -> Any:
    try:
        return json.loads(output)
    except ValueError:
        return output.decode(errors="replace")[-2000:]
