"""A viewer's figures: frames, frame rate, size, start-up time and latency.

Pure bookkeeping; callers pass the clock readings in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

LATENCY_SAMPLES = 10_000


@dataclass
class ViewerStats:
    frames: int = 0
    width: int = 0
    height: int = 0
    unreadable_stamps: int = 0
    time_to_first_frame_s: float | None = None
    first_frame_at: float | None = None
    last_frame_at: float | None = None
    latencies_ms: deque[float] = field(
        default_factory=lambda: deque(maxlen=LATENCY_SAMPLES)
    )
    _video_expected_at: float | None = None

    def expect_video(self, now: float) -> None:
        """Video became possible (we joined a room with a host, or one came)."""
        if self._video_expected_at is None:
            self._video_expected_at = now

    def add_frame(
        self, now: float, width: int, height: int, latency_ms: float | None
    ) -> None:
        self.frames += 1
        self.width, self.height = width, height
        if self.first_frame_at is None:
            self.first_frame_at = now
            if self._video_expected_at is not None:
                self.time_to_first_frame_s = now - self._video_expected_at
        self.last_frame_at = now
        if latency_ms is None:
            self.unreadable_stamps += 1
        else:
            self.latencies_ms.append(latency_ms)

    @property
    def fps(self) -> float:
        """Average frame rate from the first frame to the last."""
        if self.first_frame_at is None or self.frames < 2:
            return 0.0
        span = (self.last_frame_at or 0) - self.first_frame_at
        return (self.frames - 1) / span if span > 0 else 0.0

    def latency_percentile_ms(self, percent: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))
        return ordered[index]

    def summary(self) -> str:
        p50 = self.latency_percentile_ms(50)
        p95 = self.latency_percentile_ms(95)
        first = self.time_to_first_frame_s
        return (
            f"{self.frames} frames, {self.fps:.1f} fps, {self.width}x{self.height}, "
            f"first frame {_seconds(first)}, "
            f"glass-to-glass p50 {_ms(p50)} p95 {_ms(p95)}"
            + (
                f", {self.unreadable_stamps} unstamped"
                if self.unreadable_stamps
                else ""
            )
        )

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "frames": self.frames,
            "fps": round(self.fps, 2),
            "width": self.width,
            "height": self.height,
            "time_to_first_frame_s": self.time_to_first_frame_s,
            "latency_p50_ms": self.latency_percentile_ms(50),
            "latency_p95_ms": self.latency_percentile_ms(95),
            "unreadable_stamps": self.unreadable_stamps,
        }


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"
