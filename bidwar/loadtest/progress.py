"""The progress bar shown while the load runs (tqdm, on stderr)."""

import time

from tqdm import tqdm

from bidwar.loadtest.processes import Progress


class ProgressDisplay:
    """Joins, then seconds of bidding, with live counters in the postfix.

    Workers report cumulative counters; the display keeps the latest report
    of each and shows their sum.  ``enabled=False`` shows nothing (tests).
    """

    def __init__(self, bidders: int, duration_s: float, *, enabled: bool) -> None:
        self._enabled = enabled
        self._duration_s = duration_s
        self._reports: dict[int, Progress] = {}
        self._bar: tqdm | None = None
        self._started_at: float | None = None
        if enabled:
            self._bar = tqdm(total=bidders, desc="joining", unit="bidder", leave=False)

    def total(self, field: str) -> int:
        return sum(getattr(report, field) for report in self._reports.values())

    def update(self, report: Progress) -> None:
        self._reports[report.index] = report
        if self._bar is None:
            return
        if self._started_at is None:
            self._bar.n = self.total("joined") + self.total("gave_up")
        else:
            self._bar.n = min(
                self._duration_s, round(time.monotonic() - self._started_at)
            )
        self._bar.set_postfix(
            joined=self.total("joined"),
            bids=self.total("bids_sent"),
            accepted=self.total("bids_accepted"),
            frames=self.total("messages"),
            refresh=False,
        )
        self._bar.refresh()

    def bidding_started(self) -> None:
        self._started_at = time.monotonic()
        if self._bar is not None:
            self._bar.close()
            self._bar = tqdm(
                total=self._duration_s, desc="bidding", unit="s", leave=False
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
