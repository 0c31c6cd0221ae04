"""Sampling the server's memory (RSS) while the load runs, with psutil."""

import logging

import psutil
import trio

log = logging.getLogger("bidwar.loadtest")

SAMPLE_INTERVAL_S = 0.5
MB = 1024 * 1024


class RssSampler:
    """Samples one process's resident set size; ``marks`` name moments.

    Without a pid (or once the process is gone) it records nothing.
    """

    def __init__(self, pid: int | None) -> None:
        self._process = _process(pid)
        self.peak_mb: float | None = None
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        rss = self._sample()
        if rss is not None:
            self.marks[name] = rss

    async def run(self) -> None:
        """Sample until cancelled."""
        while self._process is not None:
            self._sample()
            await trio.sleep(SAMPLE_INTERVAL_S)

    def figures(self) -> dict[str, float] | None:
        if self.peak_mb is None:
            return None
        return {**self.marks, "peak": self.peak_mb}

    def _sample(self) -> float | None:
        if self._process is None:
            return None
        try:
            rss = round(self._process.memory_info().rss / MB, 1)
        except psutil.Error as error:
            log.warning("cannot read the server's memory any more: %s", error)
            self._process = None
            return None
        self.peak_mb = max(self.peak_mb or 0.0, rss)
        return rss


def _process(pid: int | None) -> psutil.Process | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error as error:
        log.warning("cannot watch the server process %d: %s", pid, error)
        return None
