"""The outcome of one load-test run, as data and as JSON.

:class:`RunResult` is what the invariant checks and the report read; tests
build one by hand to check that an inconsistent run is caught.
"""

import dataclasses
from typing import Any

from bidwar.loadtest.host import HostRecord
from bidwar.loadtest.journal_check import AuditOutcome, JournalFacts
from bidwar.loadtest.metrics import GroupTally


@dataclasses.dataclass
class RunResult:
    scenario: str
    bidders: int
    processes: int
    offered_rate: float
    normal: GroupTally = dataclasses.field(default_factory=GroupTally)
    slow: GroupTally = dataclasses.field(default_factory=GroupTally)
    host: HostRecord = dataclasses.field(default_factory=HostRecord)
    joined: int = 0
    gave_up: int = 0
    join_s: float | None = None
    bidding_s: float | None = None
    elapsed_s: float | None = None
    worker_errors: list[str] = dataclasses.field(default_factory=list)
    server_rss_mb: dict[str, float] | None = None
    journal: JournalFacts | None = None
    audit: AuditOutcome | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def lot(self) -> int | None:
        return self.host.lot

    def to_json(self, checks: list[Any]) -> dict[str, Any]:
        """Every figure, JSON-ready; ``checks`` are the invariant results."""
        host = self.host
        return {
            "config": self.config,
            "scenario": self.scenario,
            "bidders": self.bidders,
            "processes": self.processes,
            "offered_rate": self.offered_rate,
            "joined": self.joined,
            "gave_up": self.gave_up,
            "join_s": self.join_s,
            "bidding_s": self.bidding_s,
            "elapsed_s": self.elapsed_s,
            "normal": self.normal.summary(),
            "slow": self.slow.summary(),
            "lot": {
                "lot": host.lot,
                "bid_events": len(host.bids),
                "extensions": host.extensions,
                "closed": host.closed,
                "closed_by_host": host.closed_by_host,
                "host_saw_every_event": host.complete,
            },
            "host_connection": host.tally.summary(),
            "server_rss_mb": self.server_rss_mb,
            "journal": None if self.journal is None else {
                "records": self.journal.records,
                "bids_on_lot": len(self.journal.bids),
                "closed": self.journal.closed,
                "error": self.journal.error,
            },
            "audit": None if self.audit is None else dataclasses.asdict(self.audit),
            "worker_errors": self.worker_errors,
            "invariants": [dataclasses.asdict(check) for check in checks],
            "passed": all(check.ok for check in checks),
        }  # fmt: skip
